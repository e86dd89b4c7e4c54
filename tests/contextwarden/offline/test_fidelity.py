"""Fidelity counters (contextwarden.offline.fidelity) on hand-made sessions whose answer is known, the penalty
arithmetic, and the baselines' stages through the real replay."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from contextwarden.memory.inject import render_block
from contextwarden.memory.items import MemoryItem
from contextwarden.models.anthropic import MessagesRequest
from contextwarden.offline.fidelity import FidelityCounter, answer_items, round_trip_cost
from contextwarden.offline.replay import replay
from contextwarden.plugins import baselines as truncation
from contextwarden.plugins.clearing import stub_text
from contextwarden.wire.cost import price_for
from contextwarden.wire.dialects import ANTHROPIC
from tests.contextwarden.offline.test_replay import _asst, _line

SOURCE = "def login(user, password):\n    token = make_session_token(user)\n    return token\n"
READ_RESULT = "".join(f"{i:6d}→{ln}\n" for i, ln in enumerate(SOURCE.splitlines(), start=1)) + "\n".join(
    f"{i:6d}→# filler line {i} of the module" for i in range(4, 60))
MODEL = "claude-sonnet-4-20250514"


def session(result: str = READ_RESULT, tool: str = "Read", tool_input: dict | None = None) -> dict:
    """A user asks; the model reads a file; the request that follows carries the result."""
    return {"model": MODEL, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "fix the login"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": tool,
                                           "input": tool_input or {"file_path": "/repo/app/auth.py"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": result}]},
    ]}


EDIT = {"role": "assistant", "content": [{"type": "tool_use", "id": "t2", "name": "Edit", "input": {
    "file_path": "/repo/app/auth.py", "old_string": "    token = make_session_token(user)\n    return token",
    "new_string": "    return make_session_token(user)"}}]}


def cleared(body: dict) -> dict:
    """The body with the Read result replaced by the clearing stage's own stub."""
    out = copy.deepcopy(body)
    blk = out["messages"][2]["content"][0]
    blk["content"] = stub_text("Read", {"file_path": "/repo/app/auth.py"}, READ_RESULT, 900, 0)
    return out


def test_an_edit_of_text_a_read_returned_counts_as_a_source_and_nothing_is_lost_unchanged():
    body = session()
    f = FidelityCounter().request(body, body, EDIT, MODEL)
    assert (f.sources, f.sources_lost) == (1, 0)
    assert f.penalty == 0 and f.round_trips == 0
    # sent is an equal copy (a rewrite that changed nothing): still nothing lost
    f = FidelityCounter().request(body, copy.deepcopy(body), EDIT, MODEL)
    assert (f.sources, f.sources_lost) == (1, 0)


def test_the_read_cleared_before_the_edit_is_one_lost_edit_source():
    body = session()
    f = FidelityCounter().request(body, cleared(body), EDIT, MODEL, tokens_sent=10_000, factor=1.3)
    assert (f.sources, f.sources_lost) == (1, 1)
    assert f.by_tool == {"Read": 1 + f.refs_lost} and f.by_stage == {"cleared": 1 + f.refs_lost}
    assert f.round_trips == 1  # one Read brings all of it back
    assert f.lost[0].startswith("edit source: token = make_session_token(user)")
    assert f.penalty == pytest.approx(round_trip_cost(price_for(MODEL), 10_000, [FidelityCounter()._count(READ_RESULT)], 1.3))


def test_the_same_with_the_read_brought_back_by_memory_loses_nothing():
    body = session()
    sent = cleared(body)
    req = MessagesRequest.model_validate(sent)
    item = MemoryItem(text=READ_RESULT, session="s1", tenant="t", turn=2, role="tool", kind="tool_result", tool="Read")
    ANTHROPIC.inject(req, render_block([item]))
    sent = req.wire()
    assert sent["messages"][2]["content"][0]["content"].startswith("[contextwarden cleared")
    f = FidelityCounter().request(body, sent, EDIT, MODEL)
    assert (f.sources, f.sources_lost) == (1, 0)


def test_read_prefixes_of_both_formats_and_a_source_inside_one_line():
    tab = "".join(f"{i:6d}\t{ln}\n" for i, ln in enumerate(SOURCE.splitlines(), start=1))
    part = {"role": "assistant", "content": [{"type": "tool_use", "id": "t2", "name": "MultiEdit", "input": {
        "file_path": "/repo/app/auth.py", "edits": [{"old_string": "make_session_token(user)", "new_string": "x"},
                                                   {"old_string": "def login(user, password):", "new_string": "y"}]}}]}
    for result in (READ_RESULT, tab):
        body = session(result)
        f = FidelityCounter().request(body, body, part, MODEL)
        assert f.sources == 2
    # text the client's body never held is not a source (the model did not copy it from there)
    other = copy.deepcopy(EDIT)
    other["content"][0]["input"]["old_string"] = "def logout(user):\n    pass"
    assert FidelityCounter().request(session(), session(), other, MODEL).sources == 0


def test_references_from_a_tool_result_lost_with_it():
    out = "FAILED tests/test_auth.py::test_login - KeyError: 'session_token'\n1 failed in 0.12s"
    body = session(out, "Bash", {"command": "pytest -x"})
    answer = {"role": "assistant", "content": [
        {"type": "text", "text": "The failing test is in tests/test_auth.py: session_token is missing."},
        {"type": "tool_use", "id": "t2", "name": "Read", "input": {"file_path": "/repo/app/config.py"}}]}
    items = answer_items(answer)
    assert {"tests/test_auth.py", "session_token", "/repo/app/config.py"} <= items.refs
    assert "failing" not in items.refs and "missing" not in items.refs  # words are not references
    f = FidelityCounter().request(body, body, answer, MODEL)
    assert f.refs == 2  # the config path came from nowhere in the request: not counted
    sent = copy.deepcopy(body)
    sent["messages"][2]["content"][0]["content"] = "[contextwarden cleared this Bash result (40 tokens)]"
    f = FidelityCounter().request(body, sent, answer, MODEL, tokens_sent=5_000)
    assert (f.refs, f.refs_lost) == (2, 2) and f.by_tool == {"Bash": 2} and f.round_trips == 1
    # a path still named by a kept tool call's input is not lost
    body2 = session(out, "Bash", {"command": "pytest -x tests/test_auth.py"})
    sent2 = copy.deepcopy(body2)
    sent2["messages"][2]["content"][0]["content"] = "[cleared]"
    f = FidelityCounter().request(body2, sent2, answer, MODEL)
    assert (f.refs, f.refs_lost) == (2, 1)


def test_penalty_arithmetic():
    p = price_for(MODEL)
    assert (p.input, p.output) == (3, 15)
    # one round trip: a 10,000-token prefix read (0.1x), a 2,000-token result new (1x), 60 output tokens
    assert round_trip_cost(price_for(MODEL), 10_000, [2_000]) == pytest.approx((1_000 + 2_000) * 3e-6 + 60 * 15e-6)
    # two results, billed tokens 1.5x our count
    assert round_trip_cost(price_for(MODEL), 10_000, [2_000, 1_000], factor=1.5) == pytest.approx(
        (2 * 1_500 + 4_500) * 3e-6 + 2 * 60 * 15e-6)
    # a trip whose result is unknown: prefix and call only
    assert round_trip_cost(price_for(MODEL), 10_000, [], extra_trips=1) == pytest.approx(1_000 * 3e-6 + 60 * 15e-6)


# ---------------------------------------------------------------------------- through the real replay

T = "2025-06-10T10:{:02d}:{:02d}.000Z"


def _file(name: str) -> str:
    body = f"def {name}_entry(request):\n    return handle_{name}(request)\n" + "".join(
        f"    value_{i} = compute_{i}({name}_alpha, beta, gamma)  # step {i}\n" for i in range(120))
    return "".join(f"{i:6d}→{ln}\n" for i, ln in enumerate(body.splitlines(), start=1))


def edit_trace(path: Path) -> Path:
    """Read a.py, edit it, read b.py, c.py and d.py, then edit a.py again with text its Read returned."""
    calls = [("Read", {"file_path": "/r/a.py"}, _file("a")),
             ("Edit", {"file_path": "/r/a.py", "old_string": "    value_3 = compute_3(a_alpha, beta, gamma)  # step 3",
                       "new_string": "    value_3 = 3"}, "The file /r/a.py has been updated."),
             ("Read", {"file_path": "/r/b.py"}, _file("b")),
             ("Read", {"file_path": "/r/c.py"}, _file("c")),
             ("Read", {"file_path": "/r/d.py"}, _file("d")),
             ("Edit", {"file_path": "/r/a.py", "old_string": "    value_60 = compute_60(a_alpha, beta, gamma)  # step 60\n"
                       "    value_61 = compute_61(a_alpha, beta, gamma)  # step 61",
                       "new_string": "    value_60 = 60"}, "The file /r/a.py has been updated.")]
    rows = [_line("u0", None, "user", {"role": "user", "content": "refactor a.py"}, T.format(0, 0))]
    parent = "u0"
    for i, (name, inp, result) in enumerate(calls):
        rows.append(_line(f"a{i}", parent, "assistant",
                          _asst(f"m{i}", [{"type": "tool_use", "id": f"t{i}", "name": name, "input": inp}]), T.format(i, 1)))
        rows.append(_line(f"r{i}", f"a{i}", "user", {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"t{i}", "content": result}]}, T.format(i, 2)))
        parent = f"r{i}"
    rows.append(_line("end", parent, "assistant", _asst("m-end", [{"type": "text", "text": "Done."}]), T.format(9, 0)))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


MASK = {"clearing": {"trigger_tokens": 0, "keep_recent": 2}}  # observation masking, last 2 results whole


def test_a_masking_baseline_that_clears_the_read_loses_the_edit_source(tmp_path):
    rep = replay(edit_trace(tmp_path / "e.jsonl"), profile="baseline-observation-masking", overrides=MASK, turn_hooks=False)
    t = rep.totals()
    assert t["sent_invalid"] == 0 and t["validator_rejected"] == 0
    fid = t["fidelity"]
    assert fid["sources"] == 2 and fid["sources_lost"] == 1  # the second edit's Read of a.py was cleared
    assert fid["by_tool"].get("Read") and fid["by_stage"] == {"cleared": fid["sources_lost"] + fid["refs_lost"]}
    assert t["cost_ours_plus_penalty"] > t["cost_ours"]
    lost = [r for r in rep.results if r.fidelity and r.fidelity.sources_lost]
    assert [r.index for r in lost] == [5] and "value_60" in lost[0].fidelity.lost[0]


def test_keeping_reads_of_files_being_edited_keeps_the_source(tmp_path):
    ov = {"clearing": {**MASK["clearing"], "keep_edited_reads": 10}}
    rep = replay(edit_trace(tmp_path / "e.jsonl"), profile="baseline-observation-masking", overrides=ov, turn_hooks=False)
    t = rep.totals()
    assert t["fidelity"]["sources"] == 2 and t["fidelity"]["sources_lost"] == 0
    assert t["rewritten"] > 0 and t["sent_invalid"] == 0  # b.py and c.py were still cleared


def test_truncation_baseline_cuts_to_the_target_and_stays_valid(tmp_path):
    trace = edit_trace(tmp_path / "e.jsonl")
    full = replay(trace, profile="baseline-truncation", turn_hooks=False)  # no target, 25% of 200K: nothing to cut
    assert full.totals()["rewritten"] == 0
    targets = [max(1, r.tokens_original - 3_000) for r in full.results]
    rep = replay(trace, profile="baseline-truncation", turn_hooks=False, targets=targets,
                 extra_plugins=[(truncation.name, truncation)])
    t = rep.totals()
    assert t["sent_invalid"] == 0 and t["validator_rejected"] == 0 and t["rewritten"] >= 3
    for r, _target, f in zip(rep.results, targets, full.results):
        if r.outcome == "rewritten":
            assert r.tokens_sent < f.tokens_original
            assert r.messages_sent < r.messages_original and r.stage_events.get("truncation") == 1
    # the last edit's Read of a.py went with the oldest turns: lost
    assert t["fidelity"]["sources_lost"] >= 1 and t["fidelity"]["by_stage"].get("dropped")


def test_cli_baselines_prints_one_table_with_every_baseline(tmp_path, capsys):
    from contextwarden.cli import main as cli_main
    from contextwarden.offline import baselines

    trace = edit_trace(tmp_path / "e.jsonl")
    assert cli_main(["replay", "--baselines", "--no-turn-hooks", str(trace)]) == 0
    out = capsys.readouterr().out
    assert "lost edit sources" in out and "cost + penalty $" in out and "client as it is" in out
    for label, _ in baselines.BASELINES:
        assert label in out
    assert cli_main(["replay", "--baselines", "--no-turn-hooks", "--json", str(trace)]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert len(rows) == len(baselines.BASELINES) + 1 and rows[0]["baseline"] == "client as it is"
    # one table from rows of separate runs: one client row, the baselines in their order
    merged = baselines.merge([rows[:3], rows[2:]])
    assert [r["baseline"] for r in merged] == [r["baseline"] for r in rows]
