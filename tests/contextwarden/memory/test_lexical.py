"""The BM25 index's own work (memory/lexical.py)."""

from __future__ import annotations

import gc
from pathlib import Path

from contextwarden.memory import lexical, words
from contextwarden.memory.lexical import LexicalIndex, load_snapshot, save_snapshot
from contextwarden.memory.words import tokenize
from contextwarden.util.sealing import Sealer
from tests.support.memstore import item


def test_a_word_is_worked_out_once_while_the_index_remembers_it(monkeypatch):
    seen: list[str] = []
    terms = words._terms
    monkeypatch.setattr(words, "_terms", lambda tok: seen.append(tok) or terms(tok))
    idx = LexicalIndex()
    idx.add([item("def load_embedder(model_dir): return Embedder(model_dir)", turn=0)])
    first = list(seen)
    idx.add([item("load_embedder(model_dir) gives an Embedder", turn=1)])
    assert seen[len(first):] == ["gives", "an"]  # the words of the first item are not worked out again
    assert idx.query("load_embedder", ["t-a"], n=2)[0].item.turn in (0, 1)
    assert tokenize("load_embedder gives") == tokenize("load_embedder gives", {})


def test_a_reply_is_found_by_the_words_of_the_turn_it_answers():
    idx = LexicalIndex()
    idx.add([item("Melanie: What are your plans for the summer?", turn=0, role="assistant"),
             item("Caroline: Researching adoption agencies, it's been a dream.", turn=1),
             item("Melanie: The kids loved the pottery class.", turn=2, role="assistant"),
             item("plans: 3 files changed", turn=3, kind="tool_result"),
             item("Caroline: Nothing much.", turn=4)])
    hits = idx.query("What are the plans for the summer?", ["t-a"], n=5)
    assert hits[0].item.turn == 0 and {h.item.turn for h in hits} == {0, 1, 3}
    # the answer, at a share of its question's words; not the turn after it, nor what follows a tool result
    assert next(h.score for h in hits if h.item.turn == 1) < hits[0].score


def test_a_reply_added_before_its_question_still_borrows_its_words():
    """A rebuild from the store, or a refresh, brings items in the store's order, not the turns'."""
    idx = LexicalIndex()
    idx.add([item("Caroline: Researching adoption agencies.", turn=1),
             item("Melanie: What are your plans for the summer?", turn=0, role="assistant")])
    assert {h.item.turn for h in idx.query("plans for the summer", ["t-a"], n=5)} == {0, 1}


def test_plain_words_pair_each_plain_word_with_its_one_index_term():
    # what related words embed (the word as written) and look up (its term): letters only, 3+ of them,
    # no stopwords, no possessives, compounds or numbers
    got = words.plain_words("Caroline's Violins and load_embedder in 2023 by me, running")
    assert got == [("violin", "violins"), ("run", "running")]
    assert all(tokenize(word) == [term] for term, word in got)


def test_the_posting_lists_are_not_objects_the_garbage_collector_walks(tmp_path):
    """A full collection walks every tracked object, with each thread of the memory process waiting: the
    index's terms must not add to them (as ``array`` pairs in tuples they were three per term and
    tenant, millions under load)."""
    code = Path(lexical.__file__).read_text()
    items = [item(code[k * 1200:(k + 1) * 1200], turn=k, kind="chunk") for k in range(40)]
    idx = LexicalIndex()
    gc.collect()
    before = len(gc.get_objects())
    idx.add(items)
    gc.collect()
    terms = sum(len(p.postings) for p in idx._parts.values())
    assert terms > 500
    assert len(gc.get_objects()) - before < 6 * len(items)  # the items, their tags (was ~65 an item here)

    # a snapshot holds the same lists: the reloaded index ranks as the original does
    save_snapshot(idx, tmp_path / "lexical.npz", {"k": 1}, Sealer(None))
    again = load_snapshot(tmp_path / "lexical.npz", {"k": 1}, Sealer(None))
    assert again is not None and len(again) == len(idx)
    for q in ("posting lists garbage collector", "snapshot sealer offsets", "reply weight"):
        want = [(h.item.id, round(h.score, 4)) for h in idx.query(q, ["t-a"], n=5)]
        assert want and [(h.item.id, round(h.score, 4)) for h in again.query(q, ["t-a"], n=5)] == want
