"""Session control in-process (real Runtime and pipeline): versions, rollback, pins, compact-now, dry runs.

End to end (real mitmdump, the strict stand-in, the real Claude Code CLI): tests/e2e/test_session_control.py.
"""

from __future__ import annotations

import copy

import orjson
import pytest

from contextwarden.models.base import ApiKind
from contextwarden.sessionctl import commands, ledger
from contextwarden.sessionctl.commands import decided_state, latest
from tests.contextwarden.store.test_state import prefix, redis_server  # noqa: F401 (fixtures: a real redis-server)
from tests.support.stages import Harness, anthropic_tool_loop, settings_overrides

SUMMARY_HEAD = "[contextwarden: summary of the "
H = {"x-contextwarden-session": "s-ctl"}


def harness(home, window: int, **clearing) -> Harness:
    # (no working set: these tests pin what clearing takes, and the default working set keeps the loop's reads)
    clr = {"enabled": True, "trigger_tokens": 10**9, "keep_recent": 2, "clear_at_least": 500, "min_result_tokens": 100,
           "working_set_tokens": 0}
    clr.update(clearing)
    return Harness(home, overrides=settings_overrides(
        window=window, stages=["clearing", "compaction"], clearing=clr,
        compaction={"protect_recent_turns": 2, "min_span_tokens": 500, "soft_threshold": 0.70,
                    "hard_threshold": 0.85, "target": 0.40, "summariser": "extractive", "working_set_tokens": 0}))


def past_hard(home, fraction: float = 0.9) -> tuple[Harness, dict, int]:
    """A harness whose window the 10-turn loop fills to ``fraction`` (0.9: past hard, it compacts);
    (harness, body, the body's tokens)."""
    body = anthropic_tool_loop(10)
    h = harness(home, 1000)
    total = h.rt.tokens.count_request(ApiKind.ANTHROPIC, body)
    h.apply({"tokens": {"context_window": int(total / fraction)}})
    return h, body, total


def summary_at(body: dict) -> int | None:
    for i, m in enumerate(body["messages"]):
        c = m["content"]
        t = c if isinstance(c, str) else (c[0].get("text", "") if c and isinstance(c[0], dict) else "")
        if t.startswith(SUMMARY_HEAD):
            return i
    return None


def tool_result(body: dict, tid: str) -> str:
    for m in body["messages"]:
        for b in m["content"] if isinstance(m["content"], list) else []:
            if b.get("type") == "tool_result" and b.get("tool_use_id") == tid:
                return b["content"] if isinstance(b["content"], str) else orjson.dumps(b["content"]).decode()
    raise KeyError(tid)


def test_compaction_is_a_version_and_rollback_restores_the_span_and_its_undo_the_bytes(cw_home):
    body = anthropic_tool_loop(10)
    h = harness(cw_home, 1000)
    total = h.rt.tokens.count_request(ApiKind.ANTHROPIC, body)
    h.apply({"tokens": {"context_window": int(total / 0.9)}})  # past hard: compacts
    first = h.send(ApiKind.ANTHROPIC, body, H)
    assert summary_at(first.body) == 0, first.outcome.reason
    key = ledger.session_key(first.ctx)
    shown = commands.show(h.rt, "s-ctl")
    assert [(v["n"], v["stage"], v["trigger"]) for v in shown["version_list"]] == [(1, "compaction", "hard")]
    v1 = shown["version_list"][0]
    assert v1["tokens_before"] > v1["tokens_after"] and v1["span"][0] == 0 and v1["refs"] and v1["applied"]

    # the window is the original's size: the restored request fits; a rollback to 0 says the cost
    dry = commands.rollback(h.rt, "s-ctl", 0, apply=False)
    assert dry["fits"] and not dry["applied"] and dry["rewrite_tokens"] > 0 and dry["rewrite_usd"] > 0
    assert dry["tokens_after"] > dry["tokens_before"]
    assert commands.show(h.rt, "s-ctl")["current"] == 1  # a dry run records nothing
    done = commands.rollback(h.rt, "s-ctl", 0)
    assert done["applied"] and done["version"] == 2
    again = h.send(ApiKind.ANTHROPIC, body, H)
    assert summary_at(again.body) is None
    assert again.body["messages"] == body["messages"]  # the client's own history for the span
    rec = ledger.read(h.rt, key)
    assert rec["hold"] and rec["versions"][-1]["kind"] == "rollback"

    # rollback of the rollback: the summary comes back byte for byte
    back = commands.rollback(h.rt, "s-ctl", 1)
    assert back["applied"] and back["version"] == 3
    third = h.send(ApiKind.ANTHROPIC, body, H)
    assert orjson.dumps(third.body["messages"][0]) == orjson.dumps(first.body["messages"][0])
    assert third.body["messages"] == first.body["messages"]
    assert [v["applied"] for v in commands.show(h.rt, "s-ctl")["version_list"] if v["kind"] == "decision"] == [True]
    h.close()


def test_rollback_refuses_when_the_restored_request_does_not_fit_and_names_the_smallest_that_does(cw_home):
    h, body, total = past_hard(cw_home, 1.1)  # the client's history no longer fits
    sent = h.send(ApiKind.ANTHROPIC, body, H)
    assert summary_at(sent.body) == 0
    out = commands.rollback(h.rt, "s-ctl", 0)
    assert not out["applied"] and not out["fits"] and out["smallest_fitting_version"] == 1
    assert "would not fit" in out["refused"] and "smallest version that fits is 1" in out["refused"]
    assert commands.show(h.rt, "s-ctl")["current"] == 1
    h.close()


def test_a_pinned_tool_result_survives_the_clearing_step_that_takes_its_neighbours(cw_home):
    body = anthropic_tool_loop(6)
    h = harness(cw_home, 10**7, trigger_tokens=100)
    warm = h.send(ApiKind.ANTHROPIC, {**copy.deepcopy(body), "messages": body["messages"][:1]}, H)
    assert not warm.changed  # the proxy knows the session now
    pins = commands.pin(h.rt, "s-ctl", "toolu_0_3")["pins"]
    assert [(p["kind"], p["value"]) for p in pins] == [("tool", "toolu_0_3")]
    sent = h.send(ApiKind.ANTHROPIC, copy.deepcopy(body), H)
    assert any(e["new"] for e in sent.events("clearing"))
    assert tool_result(sent.body, "toolu_0_3") == tool_result(body, "toolu_0_3")
    for neighbour in ("toolu_0_1", "toolu_0_2", "toolu_0_4", "toolu_0_5"):
        assert tool_result(sent.body, neighbour).startswith("[contextwarden cleared this "), neighbour
    v = commands.show(h.rt, "s-ctl")["version_list"]
    assert v[0]["stage"] == "clearing" and "toolu_0_3" not in v[0]["tool_ids"] and "toolu_0_2" in v[0]["tool_ids"]
    # a pin by text keeps a result the same way; pinning a cleared one puts it back
    commands.pin(h.rt, "s-ctl", "text:" + tool_result(body, "toolu_0_2")[:40])
    back = h.send(ApiKind.ANTHROPIC, copy.deepcopy(body), H)
    assert tool_result(back.body, "toolu_0_2") == tool_result(body, "toolu_0_2")
    assert tool_result(back.body, "toolu_0_1").startswith("[contextwarden cleared this ")
    # unpin: the next clearing step may take it again
    commands.unpin(h.rt, "s-ctl", "#1")
    assert [p["kind"] for p in commands.show(h.rt, "s-ctl")["pin_list"]] == ["text"]
    h.close()


def test_compact_now_compacts_and_clears_below_every_threshold_in_one_request(cw_home):
    body = anthropic_tool_loop(8)
    h = harness(cw_home, 10**7, exclude_tools=["Bash"])  # clearing takes the Reads, compaction folds the rest
    quiet = h.send(ApiKind.ANTHROPIC, body, H)
    assert not quiet.changed
    commands.compact(h.rt, "s-ctl")
    sent = h.send(ApiKind.ANTHROPIC, body, H)
    assert summary_at(sent.body) == 0
    assert any(e["new"] for e in sent.events("clearing"))
    vs = commands.show(h.rt, "s-ctl")["version_list"]
    assert [(v["stage"], v["trigger"]) for v in vs] == [("clearing", "compact-now"), ("compaction", "manual")]
    assert not commands.show(h.rt, "s-ctl")["compact_now"]  # served once
    h.close()


def test_the_dry_run_changes_no_session_state(cw_home):
    h, body, total = past_hard(cw_home)
    sent = h.send(ApiKind.ANTHROPIC, body, H)
    before = {ns: list(h.rt.state.items(ns)) for ns in ("session", "session_versions", "compaction", "clearing")}
    ctx = latest(h.rt, ledger.session_key(sent.ctx))
    out, tokens = decided_state(h.rt, ctx)
    assert out is not None and orjson.loads(out)["messages"] == sent.body["messages"]
    assert tokens < total
    assert {ns: list(h.rt.state.items(ns)) for ns in before} == before
    h.close()


def test_compaction_folds_nothing_from_a_pinned_message_on(cw_home):
    h, body, total = past_hard(cw_home)
    h.send(ApiKind.ANTHROPIC, {**body, "messages": body["messages"][:1]}, H)
    commands.pin(h.rt, "s-ctl", "index:16")  # the user message of task 4
    sent = h.send(ApiKind.ANTHROPIC, body, H)
    assert summary_at(sent.body) == 0
    kept = len(sent.body["messages"]) - 1
    assert len(body["messages"]) - kept <= 16  # the cut is at or before the pinned message
    assert sent.body["messages"][-kept:] == body["messages"][-kept:]
    span = commands.show(h.rt, "s-ctl")["version_list"][0]["span"]
    assert span[1] < 16
    h.close()


def test_the_event_server_serves_the_session_commands(cw_home):
    import asyncio

    from contextwarden.addons.eventserver import EventService

    h, body, _ = past_hard(cw_home)
    h.send(ApiKind.ANTHROPIC, body, H)
    svc = EventService(h.rt)
    shown = asyncio.run(svc.run_command({"cmd": "session", "action": "show", "session": "s-ctl"}))
    assert [v["stage"] for v in shown["version_list"]] == ["compaction"]
    listed = asyncio.run(svc.run_command({"cmd": "session", "action": "list"}))
    assert [r["session"] for r in listed["sessions"]] == ["s-ctl"]
    out = asyncio.run(svc.run_command({"cmd": "session", "action": "compact", "session": "s-ctl"}))
    assert out["compact_now"]
    h.close()


def test_unknown_session_and_bad_targets_are_refused(cw_home):
    h = harness(cw_home, 10**7)
    with pytest.raises(commands.CommandError):
        commands.show(h.rt, "nope")
    with pytest.raises(commands.CommandError):
        commands.parse_target("index:x")
    assert commands.parse_target("12") == {"kind": "index", "value": 12}
    assert commands.parse_target("toolu_abc") == {"kind": "tool", "value": "toolu_abc"}
    assert commands.parse_target("def main") == {"kind": "text", "value": "def main"}
    h.close()


def test_versions_and_rollback_on_a_shared_redis_state_reach_every_replica(tmp_path, redis_server, prefix):
    """Two proxies on one Redis: the version replica A records and the rollback made on A apply on B."""
    def replica(name: str, window: int) -> Harness:
        over = settings_overrides(window=window, stages=["compaction"], state={"url": redis_server.url, "prefix": prefix},
                                  compaction={"protect_recent_turns": 2, "min_span_tokens": 500, "soft_threshold": 0.70,
                                              "hard_threshold": 0.85, "target": 0.40, "summariser": "extractive"})
        return Harness(tmp_path / name, overrides=over)

    body = anthropic_tool_loop(10)
    a = replica("a", 1000)
    window = int(a.rt.tokens.count_request(ApiKind.ANTHROPIC, body) / 0.9)
    a.close()
    a, b = replica("a", window), replica("b", window)
    first = a.send(ApiKind.ANTHROPIC, body, H)
    assert summary_at(first.body) == 0
    assert [v["stage"] for v in commands.show(b.rt, "s-ctl")["version_list"]] == ["compaction"]  # B reads A's versions
    assert commands.rollback(a.rt, "s-ctl", 0)["applied"]
    on_b = b.send(ApiKind.ANTHROPIC, body, H)
    assert on_b.body["messages"] == body["messages"]
    assert commands.rollback(b.rt, "s-ctl", 1)["applied"]  # (B has a request of its own now: it previews)
    assert a.send(ApiKind.ANTHROPIC, body, H).body["messages"] == first.body["messages"]
    assert [v["kind"] for v in commands.show(a.rt, "s-ctl")["version_list"]] == ["decision", "rollback", "rollback"]
    a.close()
    b.close()


def test_rollback_of_a_clearing_step_brings_the_results_back_and_its_undo_the_same_stubs(cw_home):
    body = anthropic_tool_loop(6)
    h = harness(cw_home, 10**7, trigger_tokens=100)
    first = h.send(ApiKind.ANTHROPIC, copy.deepcopy(body), H)
    stubbed = [t for t in ("toolu_0_1", "toolu_0_2") if tool_result(first.body, t).startswith("[contextwarden cleared")]
    assert stubbed == ["toolu_0_1", "toolu_0_2"]
    assert commands.rollback(h.rt, "s-ctl", 0)["applied"]
    back = h.send(ApiKind.ANTHROPIC, copy.deepcopy(body), H)
    assert back.body["messages"] == body["messages"]  # held: nothing cleared again while it fits
    assert commands.rollback(h.rt, "s-ctl", 1)["applied"]
    again = h.send(ApiKind.ANTHROPIC, copy.deepcopy(body), H)
    assert orjson.dumps(again.body["messages"]) == orjson.dumps(first.body["messages"])
    h.close()
