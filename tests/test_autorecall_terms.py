"""Automatic recall finds the references the replay's fidelity measure counts."""

from __future__ import annotations

from contextwarden.fidelity import answer_items
from contextwarden.memory.autorecall import Kept, Lost, find, read_answer, terms


def test_terms_hold_the_fidelity_measures_references():
    text = "Wrote input.jsonl and output.jsonl; see /chat and AshChat.Resources.Room, RuleID, created_at."
    msg = {"role": "assistant", "content": [{"type": "text", "text": text}]}
    refs = answer_items(msg).refs
    assert {"input.jsonl", "/chat", "AshChat.Resources.Room", "RuleID", "created_at"} <= refs
    assert refs <= terms(text) | {r for r in refs if len(r) < 5}


def test_a_term_is_held_as_a_token_not_as_part_of_a_longer_one():
    lost = [Lost("m-a1a1a1a1a1a1a1a1", 'routes: live "/chat", ChatLive\n', 3, "Edit", {"file_path": "lib/router.ex"})]
    kept = Kept([{"role": "user", "content": "synced /chat-history/x.jsonl"}])
    answer = read_answer({"role": "assistant", "content": "The /chat route is the one to change."})
    assert [(f.lost.memory_id, f.why, f.ref) for f in find(answer, lost, kept, set())] == [("m-a1a1a1a1a1a1a1a1", "term", "/chat")]
    # held for real: nothing to bring back
    held = Kept([{"role": "user", "content": "the /chat route"}])
    assert find(answer, lost, held, set()) == []
