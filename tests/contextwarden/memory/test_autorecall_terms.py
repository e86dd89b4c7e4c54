"""Automatic recall finds the references the replay's fidelity measure counts."""

from __future__ import annotations

from contextwarden.memory.autorecall import Kept, Lost, find, read_answer, terms
from contextwarden.offline.fidelity import answer_items


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


def test_an_excerpt_holds_what_the_reference_needs_and_says_what_it_left_out():
    from contextwarden.memory.autorecall import excerpt
    from contextwarden.offline.fidelity import BodyIndex, Indexer, _lines

    body = [f"line {i} filler words here" for i in range(1, 400)]
    body[200] = "    token = issue_token(req)"
    body[201] = "    log_event(token)"
    body[300] = "config lives in vendor/acme/retry_policy.toml today"
    read = "".join(f"{i:6d}→{ln}\n" for i, ln in enumerate(body, start=1))
    quote = "token = issue_token(req)\n    log_event(token)"
    got = excerpt(read, [quote, "vendor/acme/retry_policy.toml"], context=5)
    ti = Indexer().text(got)
    held = BodyIndex(ti.lines, ti.tokens)
    assert held.has_source(_lines(quote)) and held.has_ref("vendor/acme/retry_policy.toml")
    assert len(got) < len(read) / 8
    assert got.startswith("[… ") and "lines left out …]" in got and got.endswith("lines left out …]")
    assert "   201→line 201" not in got and "   196→" in got  # five lines of context before the quote
    # a reference on a very long line: the part around it, cut at spaces
    long_line = " ".join(f"w{i}" for i in range(5000)) + " needle_ident_42 " + " ".join(f"v{i}" for i in range(5000))
    cut = excerpt("head\n" + long_line + "\ntail", ["needle_ident_42"])
    assert "needle_ident_42" in cut and len(cut) < 1200 and " w4999 needle_ident_42 v0 " in cut
    assert excerpt(read, ["not_there_at_all"]) is None


def test_an_edit_of_a_lost_file_brings_back_its_read_not_only_the_snippet_of_the_last_edit():
    """An Edit's result shows a few lines around the change; the model goes on editing the rest of the
    file from its Read. When both are lost, the path brings back the Read (03a113bf lost a source there)."""
    path = "docs/GUIDE.md"
    read = "".join(f"{i:6d}→{ln}\n" for i, ln in enumerate(["# Guide", "## Tools", "use scripts", "## Checklist",
                                                              "- [ ] Git status clean?", "- [ ] Tests pass?"], start=1))
    snippet = "The file docs/GUIDE.md has been updated. Here's the result of running `cat -n` on a snippet:\n     2→## Tools\n     3→use project scripts\n"
    lost = [Lost("m-1111111111111111", read, 3, "Read", {"file_path": path}),
            Lost("m-2222222222222222", snippet, 5, "Edit", {"file_path": path, "old_string": "use scripts", "new_string": "use project scripts"})]
    answer = read_answer({"role": "assistant", "content": [{"type": "tool_use", "id": "t9", "name": "Edit", "input": {
        "file_path": path, "old_string": "## Tools\nuse project scripts", "new_string": "## Tools\nuse the project's scripts"}}]})
    got = [(f.lost.memory_id, f.why) for f in find(answer, lost, Kept([]), set())]
    assert got == [("m-2222222222222222", "quote"), ("m-1111111111111111", "path")]
    # a Write's content is the file too; an Edit's snippet comes back when nothing holds more of it
    written = Lost("m-3333333333333333", "# Guide\n## Tools\nuse scripts\n", 2, "Write", {"file_path": path, "content": "..."}, "tool_input")
    assert [(f.lost.memory_id, f.why) for f in find(answer, [written, lost[1]], Kept([]), set())][-1] == ("m-3333333333333333", "path")
    answer = read_answer({"role": "assistant", "content": [{"type": "tool_use", "id": "t9", "name": "Edit", "input": {
        "file_path": path, "old_string": "x", "new_string": "y"}}]})
    assert [(f.lost.memory_id, f.why) for f in find(answer, lost[1:], Kept([]), set())] == [("m-2222222222222222", "path")]
