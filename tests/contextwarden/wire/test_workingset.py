"""The working set (contextwarden.wire.workingset): what it keeps, and clearing and compaction keeping it."""

from __future__ import annotations

import copy

from contextwarden.models.base import ApiKind
from contextwarden.offline.replay import replay
from contextwarden.wire.workingset import Call, files, mentions, working_set
from tests.contextwarden.offline.test_fidelity import MASK, edit_trace
from tests.plugins.test_compaction import SUMMARY_HEAD, harness, summary_text, window_for
from tests.support.stages import anthropic_tool_loop


def _c(order, tool, path, text="x" * 40, key=None):
    return Call(order, tool, {"file_path": path}, key if key is not None else order, text)


def test_latest_read_per_file_and_its_edits_newest_file_first_within_the_budget():
    calls = [_c(0, "Read", "a.py"), _c(1, "Read", "b.py"), _c(2, "Edit", "a.py"), _c(3, "Read", "c.py"),
             _c(4, "Read", "b.py"), _c(5, "Read", "d.py"), _c(6, "Write", "d.py"), _c(7, "Bash", "ignored")]
    tokens = lambda c: 10  # noqa: E731
    got = working_set(calls, 1_000, tokens)
    # b.py's second Read supersedes its first; d.py's Write supersedes its Read; d.py, b.py and c.py
    # were touched after a.py's edit, so they come first
    assert [c.key for c in got] == [6, 4, 3, 0, 2]
    assert [c.key for c in working_set(calls, 30, tokens)] == [6, 4, 3]  # a.py (Read + Edit: 20) does not fit any more
    assert working_set(calls, 0, tokens) == []
    # a file edited but never read here: its edits' results are what the model saw of it
    assert [c.key for c in working_set(calls + [_c(9, "Edit", "e.py")], 1_000, tokens)] == [9, 6, 4, 3, 0, 2]
    assert [c.key for c in working_set(calls + [_c(9, "Edit", "e.py")], 1_000, tokens, edited_only=True)] == [9, 0, 2]
    # a file written, then edited: its Write (whose input is the file) and the edits since
    assert [c.key for c in working_set(calls + [_c(9, "Edit", "d.py")], 1_000, tokens, edited_only=True)] == [6, 9, 0, 2]
    # a file too big for what is left does not push out a smaller, older one
    big = calls + [_c(8, "Read", "huge.py", key=8)]
    sizes = lambda c: 500 if c.key == 8 else 10  # noqa: E731
    assert [c.key for c in working_set(big, 50, sizes)] == [6, 4, 3, 0, 2]


def test_files_extended_with_later_calls_give_the_working_set_of_all_of_them():
    """A conversation's next request reads only the calls after those it read before (clearing carries
    their files): the same set as reading them all, also when a later call comes before some of them."""
    import random

    rnd = random.Random(7)
    for _ in range(300):
        calls = [_c(o, rnd.choice(["Read", "Edit", "Write", "MultiEdit", "Bash"]), rnd.choice("abcdef") + ".py",
                    "x" * rnd.randrange(1, 200)) for o in range(rnd.randrange(0, 30))]
        if calls and rnd.random() < 0.3:
            i, j = rnd.randrange(len(calls)), rnd.randrange(len(calls))
            calls[i], calls[j] = calls[j], calls[i]  # (a result answering an earlier call)
        k = rnd.randrange(len(calls) + 1)
        known = files(calls[:k])
        tokens = lambda c: len(c.text)  # noqa: E731
        for budget in (50, 400, 5_000):
            want = [c.key for c in working_set(calls, budget, tokens)]
            assert [c.key for c in working_set(files(calls[k:], known), budget, tokens)] == want
            assert [c.key for c in working_set(files(calls[k:], files(calls[:k])), budget, tokens, latest_edits=0.3)] == \
                [c.key for c in working_set(calls, budget, tokens, latest_edits=0.3)]
        assert known == files(calls[:k])  # (what was carried is not changed by the next request)


def test_clearing_leaves_the_working_set_alone(tmp_path):
    trace = edit_trace(tmp_path / "e.jsonl")
    lost = replay(trace, profile="baseline-observation-masking", overrides=MASK, turn_hooks=False).totals()
    assert lost["fidelity"]["sources_lost"] == 1
    ov = {"clearing": {**MASK["clearing"], "working_set_tokens": 50_000}}
    t = replay(trace, profile="baseline-observation-masking", overrides=ov, turn_hooks=False).totals()
    assert t["fidelity"]["sources"] == 2 and t["fidelity"]["sources_lost"] == 0
    assert t["sent_invalid"] == 0


def test_compaction_keeps_the_folded_working_set_verbatim_in_its_summary(cw_home):
    body = anthropic_tool_loop(10)
    read = body["messages"][2]["content"][0]  # the first Read's result (src/mod0_0.py)
    assert body["messages"][1]["content"][-2]["name"] == "Read"
    # the turn's other call edits that file (a file being edited); task 1's Read is of a file never edited
    body["messages"][1]["content"][-1].update(name="Edit", input={"file_path": "src/mod0_0.py", "old_string": "a",
                                                                  "new_string": "b"})
    edit = body["messages"][2]["content"][1]
    other = body["messages"][6]["content"][0]
    results = []
    for budget in (0, 20_000):
        h = harness(cw_home / str(budget), 1000, working_set_tokens=budget)
        h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, body, 0.9)}})
        sent = h.send(ApiKind.ANTHROPIC, copy.deepcopy(body))
        text = summary_text(sent.body["messages"][0])
        assert text.startswith(SUMMARY_HEAD)
        results.append(text)
        again = h.send(ApiKind.ANTHROPIC, copy.deepcopy(body))  # re-applied byte for byte
        assert summary_text(again.body["messages"][0]) == text
        h.close()
    off, on = results
    assert read["content"] not in off
    kept = on.split("Files this conversation is working with")[1]
    assert "[Read src/mod0_0.py]\n" + read["content"] in kept and "[Edit src/mod0_0.py]\n" + edit["content"] in kept
    assert other["content"] not in kept and "[Bash" not in kept  # read for context only, never edited


def test_a_file_named_after_its_read_counts_as_being_worked_on():
    # a.py read for context, then the model runs it / talks about it; c.py is being edited
    calls = [_c(0, "Read", "a.py"), _c(1, "Read", "b.py"), _c(2, "Read", "c.py"), _c(3, "Edit", "c.py")]
    tokens = lambda c: 10  # noqa: E731
    assert [c.key for c in working_set(calls, 1_000, tokens, edited_only=True)] == [2, 3]
    # named after its Read: being worked on, and touched then (ranked first)
    assert [c.key for c in working_set(calls, 1_000, tokens, edited_only=True, mentioned={"a.py": 9})] == [0, 2, 3]
    assert [c.key for c in working_set(calls, 10, tokens, edited_only=True, mentioned={"a.py": 9})] == [0]
    # named before its latest Read (the name led to the Read): not a sign of work on it
    assert [c.key for c in working_set(calls + [_c(10, "Read", "a.py")], 1_000, tokens, edited_only=True,
                                       mentioned={"a.py": 9})] == [2, 3]
    # the whole set (clearing's): a mention only moves the file up
    assert [c.key for c in working_set(calls, 1_000, tokens)] == [2, 3, 1, 0]
    assert [c.key for c in working_set(calls, 1_000, tokens, mentioned={"a.py": 9})] == [0, 2, 3, 1]


def test_a_written_file_counts_as_being_edited_when_asked():
    calls = [_c(0, "Write", "new.md"), _c(1, "Read", "old.md"), _c(2, "Read", "c.py"), _c(3, "Edit", "c.py")]
    tokens = lambda c: 10  # noqa: E731
    assert [c.key for c in working_set(calls, 1_000, tokens, edited_only=True)] == [2, 3]
    assert [c.key for c in working_set(calls, 1_000, tokens, edited_only=True, written=True)] == [2, 3, 0]


def test_a_file_whose_read_no_longer_fits_keeps_its_edit_snippets():
    calls = [_c(0, "Read", "big.md", key=0), _c(1, "Edit", "big.md", key=1), _c(2, "Edit", "big.md", key=2),
             _c(3, "Read", "small.py", key=3)]
    sizes = lambda c: 500 if c.key == 0 else 10  # noqa: E731
    assert [c.key for c in working_set(calls, 1_000, sizes)] == [3, 0, 1, 2]
    assert [c.key for c in working_set(calls, 50, sizes)] == [3, 1, 2]  # big.md's Edits' snippets only
    assert [c.key for c in working_set(calls, 25, sizes)] == [3]  # not even those
    assert working_set(calls[:1] + calls[3:], 50, sizes) == [calls[3]]  # a Read alone: nothing of it


def test_mentions_find_a_path_by_its_name_in_commands_and_words():
    paths = ["/r/scripts/run.sh", "/r/docs/README.md", "/r/lib/README.md", "/r/src/unseen_mod.py", "/r/a.py"]
    texts = [(3, "cd /r && ./scripts/run.sh --all"), (4, "Now update docs/README.md and README.md"),
             (5, "fixed the call in unseen_mod.py"), (6, "the a.py helper"), (7, "run.sh again")]
    got = mentions(paths, texts)
    # a file name alone names a file when no other file of the set has it and it looks like one
    # (README.md is two files here; a.py is too short to tell from a word)
    assert got == {"/r/scripts/run.sh": 7, "/r/docs/README.md": 4, "/r/src/unseen_mod.py": 5}
    assert mentions(paths, []) == {}


def test_compaction_keeps_a_read_file_the_kept_turns_name(cw_home):
    """A file read for context and not edited yet, which the model names again in the turns a compaction
    keeps (it is about to change it), is kept verbatim in the summary with working_set_mentions."""
    body = anthropic_tool_loop(10)
    read = body["messages"][2]["content"][0]  # task 0's Read (src/mod0_0.py), never edited
    other = body["messages"][6]["content"][0]  # task 1's Read, never named again
    body["messages"][-2]["content"][0]["text"] = "Tests pass. Next I will change src/mod0_0.py the same way."
    kept = []
    for mentions_on in (False, True):
        h = harness(cw_home / str(mentions_on), 1000, working_set_tokens=20_000, working_set_mentions=mentions_on)
        h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, body, 0.9)}})
        sent = h.send(ApiKind.ANTHROPIC, copy.deepcopy(body))
        text = summary_text(sent.body["messages"][0])
        assert text.startswith(SUMMARY_HEAD)
        kept.append(text.split("Files this conversation is working with")[1] if "Files this conversation" in text else "")
        h.close()
    off, on = kept
    assert read["content"] not in off
    assert "[Read src/mod0_0.py]\n" + read["content"] in on and other["content"] not in on


def test_a_follow_up_without_new_calls_keeps_the_same_working_set(cw_home, monkeypatch):
    """Clearing carries the working set it computed when every call was in the carried messages: the
    person's next messages get that very set back, and a new call computes it again; each time the
    same set as computed from all the calls (no carry)."""
    from contextwarden.plugins import clearing
    from tests.plugins.test_clearing import harness

    got: list[tuple[frozenset, frozenset]] = []
    orig = clearing._working_set

    def spy(ctx, slots, budget, carry=None):
        out = orig(ctx, slots, budget, carry)
        got.append((out, orig(ctx, slots, budget, None)))  # (no carry: from all the calls)
        return out

    monkeypatch.setattr(clearing, "_working_set", spy)
    h = harness(cw_home, trigger_tokens=2_000, clear_at_least=100_000, working_set_tokens=3_000)
    body = anthropic_tool_loop(8, result_words=500)

    def follow(b: dict, i: int, read: bool = False) -> dict:
        last = {**b["messages"][-1], "content": [{k: v for k, v in c.items() if k != "cache_control"} for c in b["messages"][-1]["content"]]}
        new: list[dict] = [{"role": "assistant", "content": [{"type": "text", "text": f"Answer {i}."}]}]
        if read:
            new[0]["content"].append({"type": "tool_use", "id": f"toolu_new_{i}", "name": "Read", "input": {"file_path": f"src/new{i}.py"}})
            new += [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_new_{i}", "content": "x = 1\n" * 50}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "Read it."}]}]
        new.append({"role": "user", "content": [{"type": "text", "text": f"Follow-up {i}?", "cache_control": {"type": "ephemeral"}}]})
        return {**b, "messages": b["messages"][:-1] + [last] + new}

    sets = []
    for i, read in enumerate([False, False, False, True, False, False]):
        body = follow(body, i, read)
        h.send(ApiKind.ANTHROPIC, body)
        sets.append(got[-1][0])
    assert got and all(carried == whole for carried, whole in got)
    assert sets[1] is sets[0] and sets[2] is sets[0]  # the person's follow-ups: the carried set itself
    assert sets[3] is not sets[2] and "toolu_new_3" in sets[3]  # a new Read: computed again, and kept
    assert sets[5] is sets[4]
    h.close()
