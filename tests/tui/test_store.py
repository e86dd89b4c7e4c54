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


def test_a_compaction_line_says_why_it_compacted():
    base = {"applied": True, "messages": 19, "tokens_before": 57_985, "tokens_after": 30_732, "summary_tokens": 1701}
    line = summarise({"type": "compaction", "data": {**base, "trigger": "soft", "warm": False}})
    assert line == "19 msgs → summary, 57,985 → 30,732 tok (−27,253), summary 1701 tok (cold cache: the prompt is written anyway)"
    assert summarise({"type": "compaction", "data": {**base, "trigger": "soft", "warm": True}}).endswith("(soft threshold: pays off)")
    assert summarise({"type": "compaction", "data": {**base, "trigger": "hard"}}).endswith("(hard threshold)")
    assert summarise({"type": "compaction", "data": {**base, "reused": True, "trigger": "hard"}}).endswith(", reused prefix")
