"""The BM25 index's own work (memory/lexical.py)."""

from __future__ import annotations

from contextwarden.memory import lexical
from contextwarden.memory.lexical import LexicalIndex, tokenize
from tests.support.memstore import item


def test_a_word_is_worked_out_once_while_the_index_remembers_it(monkeypatch):
    seen: list[str] = []
    terms = lexical._terms
    monkeypatch.setattr(lexical, "_terms", lambda tok: seen.append(tok) or terms(tok))
    idx = LexicalIndex()
    idx.add([item("def load_embedder(model_dir): return Embedder(model_dir)", turn=0)])
    first = list(seen)
    idx.add([item("load_embedder(model_dir) gives an Embedder", turn=1)])
    assert seen[len(first):] == ["gives", "an"]  # the words of the first item are not worked out again
    assert idx.query("load_embedder", ["t-a"], n=2)[0].item.turn in (0, 1)
    assert tokenize("load_embedder gives") == tokenize("load_embedder gives", {})
