"""The current session first: a tenant whose memory holds many other sessions still finds the current
session's items (``memory.other_sessions_weight``), with a real Chroma store, the real model and BM25."""

from __future__ import annotations

import pytest

from contextwarden.memory import lexical
from contextwarden.memory.ids import memory_id
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


def test_an_item_indexed_before_its_vector_joins_the_session_ranking_once_stored(crowded):
    """The ingestor indexes words first and embeds later: an item the session's matrix read without a
    vector is read again once the store has it (``stored``), and not looked up on every search before."""
    from contextwarden.memory.scope import SessionVectors

    st, lex, _ = crowded
    sv = SessionVectors(st)
    q = embedder()(["a holiday in Lisbon"])[0]
    assert len(sv.rank(lex, ["t-a"], "cur", q, 10)) == 2
    later = item("Next summer we spend a holiday in Lisbon by the sea.", session="cur", turn=2)
    lex.add([later])  # searchable by words; its vector still waits
    fetched: list[int] = []
    real = sv._fetch
    sv._fetch = lambda items: (fetched.append(len(items)), real(items))[1]
    assert later.text not in [it.text for it, _ in sv.rank(lex, ["t-a"], "cur", q, 10)] and fetched == [1]
    assert len(sv.rank(lex, ["t-a"], "cur", q, 10)) == 2 and fetched == [1]  # waiting: not read again
    st.add([later])
    sv.stored([later])
    again = sv.rank(lex, ["t-a"], "cur", q, 10)
    assert fetched == [1, 1] and len(again) == 3 and again[0][0].text == later.text


# --- the current project --------------------------------------------------------------------------------
PROJECT_FACT = "The release checklist says: bump the version in setup.cfg, then tag and push."
# other projects' sessions of the same tenant, on the same subject: they crowd the tenant-wide rankings
OTHER_PROJECTS = [f"Our release checklist for service {i}: bump the version number, tag the release and push it."
                  for i in range(40)]


def test_project_of_reads_the_working_directory_clients_send():
    import json

    from contextwarden.memory.project import project_of
    from tests.conftest import EVAL_DIR

    # Claude Code 2.x, as recorded: " - Primary working directory: /tmp/ccwork2" in its system prompt
    recorded = json.loads((EVAL_DIR / "requests" / "claude-code-2.1.197-turn1.json").read_text())
    assert project_of(recorded) == "/tmp/ccwork2"
    older = {"system": "You are Claude Code.\n<env>\nWorking directory: /home/u/repo/\nIs directory a git repo: Yes\n"
                       "</env>", "messages": [{"role": "user", "content": "hi"}]}
    assert project_of(older) == "/home/u/repo"
    codex = {"instructions": "You are Codex.", "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text":
         "<environment_context>\n  <cwd>/srv/codex-proj</cwd>\n  <approval_policy>never</approval_policy>\n"
         "</environment_context>"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix the tests"}]}]}
    assert project_of(codex) == "/srv/codex-proj"
    chat = {"messages": [{"role": "system", "content": "Current working directory: `C:\\work\\app`"},
                         {"role": "user", "content": "hello"}]}
    assert project_of(chat) == "C:\\work\\app"
    # not a statement of where the client runs: a tool description, or a directory named later on
    assert project_of({"system": "Working directory persists between calls.", "messages": []}) is None
    late = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}] * 3
    late.append({"role": "user", "content": "Working directory: /elsewhere"})
    assert project_of({"messages": late}) is None and project_of(None) is None


@pytest.fixture
def projects(tmp_path):
    st = store(tmp_path)
    items = [item("I had pasta for lunch today.", session="cur", turn=0, project="/src/app"),
             item("Unrelated: the office plants need water on Fridays.", session="app-old", turn=0, project="/src/app"),
             item(PROJECT_FACT, session="app-old", turn=1, project="/src/app")]
    items += [item(t, session=f"other-{i}", turn=0, project=f"/src/svc{i}") for i, t in enumerate(OTHER_PROJECTS)]
    yield _stored(st, items)
    st.close()


def _stored(st, items: list) -> tuple:
    """``items`` in the store ``st`` and in a BM25 index of their own: (st, index)."""
    st.add(items)
    lex = LexicalIndex()
    lex.add(items)
    return st, lex


def test_lexical_query_scoped_to_a_project(projects):
    _, lex = projects
    assert lex.project_size("t-a", "/src/app") == 3 and lex.project_size("t-a", "/nowhere") == 0
    hits = lex.query("release checklist version", ["t-a"], n=5, project="/src/app")
    assert [h.item.text for h in hits] == [PROJECT_FACT]
    assert PROJECT_FACT not in [h.item.text for h in lex.query("release checklist version", ["t-a"], n=5)]


def test_current_project_is_found_among_other_projects(projects):
    st, lex = projects
    q = Query("what is on the release checklist?")
    r = Retriever(st, lex, embedder(), None, MemorySection(candidates=10, neighbour_weight=0))
    # the session first, but no project: the project's older session is crowded out by the other projects
    assert PROJECT_FACT not in _texts(r.search(q, ["t-a"], session="cur"), 10)
    ret = r.search(q, ["t-a"], session="cur", project="/src/app")
    top = ret.hits[0]
    assert top.item.text == PROJECT_FACT and top.vector_rank == 1 and top.lexical_rank == 1
    cfg = r.settings
    assert top.fused == pytest.approx(cfg.project_weight * (cfg.vector_weight + cfg.lexical_weight) / (cfg.rrf_k + 1))
    assert any(h.item.project != "/src/app" for h in ret.hits[1:10])  # the other projects still come, below
    # a project weighed no more than the other sessions: no preference
    off = Retriever(st, lex, embedder(), None, MemorySection(candidates=10, neighbour_weight=0,
                                                             project_weight=cfg.other_sessions_weight))
    assert PROJECT_FACT not in _texts(off.search(q, ["t-a"], session="cur", project="/src/app"), 10)


def test_the_current_session_and_project_come_before_the_rest(projects):
    st, lex = projects
    mine = item("Today we agreed the release checklist also needs the changelog updated.", session="cur", turn=1,
                project="/src/app")
    st.add([mine])
    lex.add([mine])
    q = Query("what is on the release checklist?")
    # by default the project weighs as the session: both first in their scope, tied, above the rest
    r = Retriever(st, lex, embedder(), None, MemorySection(candidates=10, neighbour_weight=0))
    hits = r.search(q, ["t-a"], session="cur", project="/src/app").hits
    assert {h.item.text for h in hits[:2]} == {mine.text, PROJECT_FACT} and hits[0].fused == hits[1].fused
    assert all(h.fused < hits[1].fused for h in hits[2:])
    # weighed below the session, the project comes second
    r = Retriever(st, lex, embedder(), None, MemorySection(candidates=10, neighbour_weight=0, project_weight=0.8))
    assert _texts(r.search(q, ["t-a"], session="cur", project="/src/app"), 3)[:2] == [mine.text, PROJECT_FACT]


def _project_body(workdir: str, messages: list[dict]) -> dict:
    return {"model": "claude-eval", "max_tokens": 1024, "messages": messages,
            "system": [{"type": "text", "text": "You are a coding agent.\n\n# Environment\n"
                                                f" - Primary working directory: {workdir}\n - Platform: linux\n"}]}


def test_the_proxy_stores_each_items_project_and_ranks_the_current_project_first(tmp_path):
    """Through the real pipeline: the project comes from the system prompt the client sends, is stored
    with every item of its turns, and a new session's question finds its own project's answer first."""
    from tests.plugins.test_memory import memory_event, replayer

    facts = {"/src/app": "The staging database for this repo is pg-staging-7 on port 6432.",
             "/src/other": "The staging database for this repo is mysql-stage-2 on port 3307."}
    rp = replayer(tmp_path, window=8192)
    try:
        for n, (workdir, fact) in enumerate(facts.items()):
            msgs = [{"role": "user", "content": fact}]
            rp.complete(rp.send(body=_project_body(workdir, msgs), session=f"old-{n}"), ["Thanks.", "Got it."][n])
        assert rp.flush()
        stored = {it.text: it.project for it in rp.memory().store.iter_items()}
        assert {stored[f] for f in facts.values()} == set(facts) and set(stored.values()) == set(facts)
        for n, (workdir, fact) in enumerate(facts.items()):
            first = [{"role": "user", "content": f"Good morning, let's continue in {workdir}."}]
            rp.complete(rp.send(body=_project_body(workdir, first), session=f"new-{n}"), "Morning!")
            assert rp.flush()
            asked = first + [{"role": "assistant", "content": "Morning!"},
                             {"role": "user", "content": "Which staging database does this repo use?"}]
            sent = rp.send(body=_project_body(workdir, asked), session=f"new-{n}")
            ids = memory_event(rp, sent.ctx.flow_id).get("ids") or []
            mine, theirs = memory_id(fact), memory_id(next(f for f in facts.values() if f != fact))
            assert mine in ids and (theirs not in ids or ids.index(mine) < ids.index(theirs)), (workdir, ids)
    finally:
        rp.close()


def test_an_older_sessions_neighbours_get_that_sessions_weight(tmp_path, monkeypatch):
    # the message next to another session's hit comes in through the neighbour ranking, at the weight
    # of the other sessions: it must not rank as if it were the current session's (and only through it:
    # not by the words of the turn it answers, which BM25 otherwise lends it)
    monkeypatch.setattr(lexical, "REPLY_WEIGHT", 0.0)
    st = store(tmp_path)
    reply = "Sounds lovely, tell me more."
    items = [item("I had pasta for lunch today.", session="cur", turn=0), item(CURRENT, session="cur", turn=1),
             item(CROWD[0], session="old", turn=0), item(reply, session="old", turn=1)]
    _, lex = _stored(st, items)
    try:
        cfg = MemorySection(candidates=10, min_similarity=0.2)
        ret = Retriever(st, lex, embedder(), None, cfg).search(Query("what dog did we adopt from the shelter?"),
                                                               ["t-a"], session="cur", neighbours=lex.neighbours)
        nb = next(h for h in ret.hits if h.item.text == reply)
        assert nb.lexical is None and (nb.vector or 0) < cfg.min_similarity  # found as a neighbour only
        assert nb.fused == pytest.approx(cfg.other_sessions_weight * cfg.neighbour_weight / (cfg.rrf_k + 1))
        assert ret.hits[0].item.text == CURRENT
    finally:
        st.close()


def test_a_search_whose_vector_half_started_ahead_ranks_as_one_made_at_once(crowded):
    """memory.prefetch: Retriever.start (the embedding and the vector query, which need no exclude)
    made before the stages run, finished by search(vectors=...): the same candidates, scores and ranks
    as a search made in one go, exclusions applied the same; another query's start is not used."""
    import concurrent.futures as cf

    st, lex, items = crowded
    pool = cf.ThreadPoolExecutor(2)
    try:
        r = Retriever(st, lex, embedder(), pool, MemorySection(candidates=10))
        q = Query("what dog did we adopt from the shelter?", context="we talked about pets")
        gone = {items[3].id, items[1].id}  # the current session's answer among them: still in the history

        def exclude(it):
            return it.id in gone

        ahead = r.start(q, ["t-a"], session="cur")
        assert ahead.future is not None and ahead.scoped
        a = r.search(q, ["t-a"], session="cur", exclude=exclude, vectors=ahead)
        b = r.search(q, ["t-a"], session="cur", exclude=exclude)
        assert a.timings.get("prefetched") == 1 and "prefetched" not in b.timings
        assert a.hits and [(h.item.id, round(h.fused, 9), h.vector_rank, h.lexical_rank) for h in a.hits] == \
               [(h.item.id, round(h.fused, 9), h.vector_rank, h.lexical_rank) for h in b.hits]
        assert a.in_history == b.in_history > 0 and not gone & {h.item.id for h in a.hits}
        assert a.mode == b.mode == "hybrid" and a.vector_query == b.vector_query
        # a start for another query (or another session) is not this search's: made anew
        other = r.start(Query("pasta for lunch"), ["t-a"], session="cur")
        c = r.search(q, ["t-a"], session="cur", exclude=exclude, vectors=other)
        assert "prefetched" not in c.timings and [h.item.id for h in c.hits] == [h.item.id for h in b.hits]
        d = r.search(q, ["t-a"], session="old-1", exclude=exclude, vectors=r.start(q, ["t-a"], session="cur"))
        assert "prefetched" not in d.timings
    finally:
        pool.shutdown()
