"""tui.store: the events' one-line summaries the Events tab shows."""

from __future__ import annotations

from tui.store import summarise


def test_a_memory_injection_reads_as_one_sentence_with_the_item_count_once():
    # the memory event's "why" counts the items already: the line read "injected 1 items, 176 tokens: 1 item ..."
    why = "1 item from 1 session the history no longer holds; best match on host, deploy, similarity up to 0.49"
    line = summarise({"type": "memory", "data": {"injected": 1, "tokens": 1176, "why": why}})
    assert line == f"injected 1,176 tokens: {why}"
    nothing = summarise({"type": "memory", "data": {"injected": 0, "why": "nothing stored that matches"}})
    assert nothing == "nothing stored that matches"
