"""The current session first: a tenant whose memory holds many other sessions still finds the current
session's items (``memory.other_sessions_weight``), with a real Chroma store, the real model and BM25."""

from __future__ import annotations

import pytest

from contextwarden.memory.lexical import LexicalIndex
from contextwarden.memory.retrieve import Query, Retriever
from contextwarden.settings.memory import MemorySection
from tests.support.memstore import embedder, item, store

CURRENT = "We adopted a beagle named Biscuit from the shelter in April."
# other sessions of the same tenant, all about dogs and adoption: they crowd the tenant-wide rankings
CROWD = [f"Did we adopt a dog from the shelter? We did adopt dog number {i} from the dog shelter." for i in range(40)]


@pytest.fixture
def crowded(tmp_path):
    st = store(tmp_path)
    items = [item("I had pasta for lunch today.", session="cur", turn=0),
             item(CURRENT, session="cur", turn=1)]
    items += [item(t, session=f"old-{i}", turn=0) for i, t in enumerate(CROWD)]
    st.add(items)
    lex = LexicalIndex()
    lex.add(items)
    yield st, lex, items
    st.close()


def _texts(ret, k):
    return [h.item.text for h in ret.hits[:k]]


def test_lexical_query_scoped_to_a_session(crowded):
    _, lex, _ = crowded
    assert lex.other_sessions(["t-a"], "cur") and lex.other_sessions(["t-a"], "nobody")
    solo = LexicalIndex()
    solo.add([item(CURRENT, session="cur")])
    assert not solo.other_sessions(["t-a"], "cur") and not lex.other_sessions(["t-zz"], "cur")
    hits = lex.query("beagle shelter adopted", ["t-a"], n=5, session="cur")
    assert [h.item.session for h in hits] == ["cur"] and hits[0].item.text == CURRENT
    assert {h.item.session for h in lex.query("beagle shelter adopted", ["t-a"], n=5)} != {"cur"}


def test_current_session_is_found_among_crowding_sessions(crowded):
    st, lex, _ = crowded
    q = Query("what dog did we adopt from the shelter?")
    flat = Retriever(st, lex, embedder(), None, MemorySection(candidates=10, neighbour_weight=0))
    # without the session (or with no preference) the current session's item is crowded out
    assert CURRENT not in _texts(flat.search(q, ["t-a"]), 10)
    assert CURRENT not in _texts(Retriever(st, lex, embedder(), None, MemorySection(
        candidates=10, neighbour_weight=0, other_sessions_weight=1.0)).search(q, ["t-a"], session="cur"), 10)
    ret = flat.search(q, ["t-a"], session="cur")
    assert ret.hits[0].item.text == CURRENT
    top = ret.hits[0]
    cfg = flat.settings
    # ranked as if the tenant held that session alone: first in both of its session's rankings
    assert top.vector_rank == 1 and top.lexical_rank == 1
    assert top.fused == pytest.approx((cfg.vector_weight + cfg.lexical_weight) / (cfg.rrf_k + 1))
    # the other sessions still come, below it
    assert any(h.item.session != "cur" for h in ret.hits[1:10])


def test_a_tenant_with_one_session_ranks_as_before(tmp_path):
    st = store(tmp_path)
    items = [item(t, session="only", turn=i) for i, t in enumerate([CURRENT] + CROWD[:10])]
    st.add(items)
    lex = LexicalIndex()
    lex.add(items)
    try:
        r = Retriever(st, lex, embedder(), None, MemorySection(neighbour_weight=0))
        q = Query("what dog did we adopt?")
        a, b = r.search(q, ["t-a"]), r.search(q, ["t-a"], session="only")
        assert [(h.item.id, h.fused) for h in a.hits] == [(h.item.id, h.fused) for h in b.hits]
    finally:
        st.close()


def test_words_common_in_the_current_session_are_pruned_there():
    # the two names every message of this chat carries are rare in the tenant (many other chats), yet
    # they tell none of this session's items apart: the vector query of the session leaves them out
    lex = LexicalIndex()
    lex.add([item(f"Caroline: message number {i} about topic{i}", session="cur", turn=i) for i in range(60)])
    lex.add([item(f"Someone else: note {i} on subject{i}", session=f"old-{i}", turn=0) for i in range(400)])
    q = "What did Caroline say about topic7?"
    assert lex.prune_common(q, ["t-a"], 0.2) == q
    assert lex.prune_common(q, ["t-a"], 0.2, session="cur") == "What did say about topic7?"
    assert lex.df_ratio("caroline", ["t-a"], "cur") == (1.0, 60)


def test_session_vectors_follow_what_the_session_stores(crowded):
    from contextwarden.memory.scope import SessionVectors

    st, lex, _ = crowded
    sv = SessionVectors(st)
    q = embedder()(["a holiday in Lisbon"])[0]
    first = sv.rank(lex, ["t-a"], "cur", q, 10)
    assert {it.session for it, _ in first} == {"cur"} and len(first) == 2
    later = item("Next summer we spend a holiday in Lisbon by the sea.", session="cur", turn=2)
    st.add([later])
    lex.add([later])
    again = sv.rank(lex, ["t-a"], "cur", q, 10)
    assert len(again) == 3 and again[0][0].text == later.text  # the kept matrix grew by the new item
    sims = dict((it.id, s) for it, s in st.vector_query("", ["t-a"], 50, query_embedding=q))
    assert again[0][1] == pytest.approx(sims[later.id], abs=1e-4)  # the same similarity Chroma gives
