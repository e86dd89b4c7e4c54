"""The fall-back to the session's decided state (pipeline.Pipeline.decided, the ``cw_reapply`` hook).

A stage that raises, overruns its budget, or is skipped by the breaker costs the request its new work
only: every decision already stored for the session (clearing's stubs, compaction's summary) goes out
again byte for byte. Only when even re-applying fails does the client's original go, with an event.
"""

from __future__ import annotations

import threading

import orjson
import pytest

from contextwarden import hookimpl
from contextwarden.core.runtime import Runtime
from contextwarden.core.stagebudgets import StageTimes
from contextwarden.models.anthropic import TextBlock
from contextwarden.models.base import ApiKind
from contextwarden.plugins import clearing, compaction
from contextwarden.request import lifecycle
from contextwarden.settings import load_settings
from tests.support.stages import anthropic_tool_loop
from tests.support.wait import wait_until

MARK = "[new work of this request]"
SABOTEUR_BUDGET_MS = 300
SUMMARY_HEAD = "[contextwarden: summary of the "


class Saboteur:
    """A stage after clearing and compaction (where memory runs) that adds new work to the request,
    or raises, or writes garbage into ctx.request and then hangs until the test lets it go."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.gate = threading.Event()
        self.returned = threading.Event()

    @hookimpl
    def cw_request(self, ctx) -> None:
        if self.mode == "raise":
            raise RuntimeError("saboteur failed on purpose")
        if self.mode == "hang":
            # an abandoned call still putting edited messages into its request
            msgs = ctx.request.messages
            msgs[0] = msgs[0].model_copy(update={"content": "CORRUPTED BY THE ABANDONED CALL"})
            self.gate.wait(30)
            msgs[1] = msgs[1].model_copy(update={"content": "CORRUPTED LATER"})
            ctx.emit("saboteur", done=True)
            self.returned.set()
            return
        last = ctx.request.messages[-1]
        blocks = [TextBlock(type="text", text=last.content)] if isinstance(last.content, str) else list(last.content)
        text = MARK if self.mode == "ok" else MARK + " " + "bloat " * 40_000
        ctx.request.messages[-1] = last.model_copy(update={"content": blocks + [TextBlock(type="text", text=text)]})


def _runtime(home, sab: Saboteur, window: int = 30_000, budgets: dict | None = None) -> Runtime:
    overrides = {
        "tokens": {"context_window": window},
        "pipeline": {"order": ["clearing", "compaction", "saboteur"], "stage_budget_ms": 20_000,
                     "budgets_ms": {"saboteur": SABOTEUR_BUDGET_MS, **(budgets or {})}, "adaptive_budgets": False,
                     "disabled": ["budget", "strip", "tagging", "memory"]},
        "clearing": {"trigger_tokens": 8000, "clear_at_least": 1000, "keep_recent": 2},
        "compaction": {"soft_threshold": 0.2, "hard_threshold": 0.25, "target": 0.1, "protect_recent_turns": 2,
                       "min_span_tokens": 500},
        "memory": {"enabled": False},
    }
    return Runtime(load_settings("default", home, overrides=overrides), home, profile="default", log=False,
                   extra_plugins=[("saboteur", sab)])


class Sent:
    def __init__(self, rt, ctx, outcome) -> None:
        self.rt, self.ctx, self.outcome = rt, ctx, outcome
        self.raw = outcome.body if outcome.body is not None else ctx.request_bytes
        self.body = orjson.loads(self.raw)

    def events(self, type: str) -> list[dict]:
        return [e.data for e in self.rt.bus.recent if e.type == type and e.flow_id == self.ctx.flow_id]


_n = iter(range(1, 10**6))


def send(rt: Runtime, body: dict) -> Sent:
    raw = orjson.dumps(body)
    ctx, outcome = lifecycle.send(rt, ApiKind.ANTHROPIC, "api.anthropic.com", "/v1/messages",
                                  [("content-type", "application/json"), ("x-api-key", "sk-test")], raw, f"flow-{next(_n)}")
    return Sent(rt, ctx, outcome)


def _has_mark(body: dict) -> bool:
    return MARK in orjson.dumps(body).decode()


def _stubs(body: dict) -> dict[str, bytes]:
    return {b["tool_use_id"]: orjson.dumps(b) for m in body["messages"] if isinstance(m["content"], list)
            for b in m["content"] if b.get("type") == "tool_result" and str(b.get("content")).startswith(clearing.STUB_PREFIX)}


def _decided_prefix(first: Sent, later: Sent) -> None:
    """``later`` carries ``first``'s decisions byte for byte: the same summary message, and every
    result ``first`` cleared cleared with the same stub (decisions stored since are there too)."""
    a, b = first.body["messages"], later.body["messages"]
    assert b[0]["content"][0]["text"].startswith(SUMMARY_HEAD)
    assert orjson.dumps(b[0]) == orjson.dumps(a[0])
    mine, theirs = _stubs(first.body), _stubs(later.body)
    assert all(theirs.get(k) == v for k, v in mine.items())
    assert orjson.dumps(later.body["system"]) == orjson.dumps(first.body["system"])


def _session(rt: Runtime, sab: Saboteur) -> tuple[Sent, dict]:
    """The first request decides (clearing and compaction) and carries the saboteur's new work; the
    second body is the same conversation one turn later."""
    first = send(rt, anthropic_tool_loop(10, result_words=500))
    assert first.outcome.body is not None and first.outcome.fallback is None, first.outcome.reason
    assert first.events("compaction")[-1]["applied"] and first.events("clearing")
    assert _has_mark(first.body)
    return first, anthropic_tool_loop(11, result_words=500)


@pytest.fixture
def sabotaged(cw_home):
    """A runtime with the Saboteur stage, closed (its hung call released first) after the test."""
    sab = Saboteur()
    rt = _runtime(cw_home, sab)
    yield sab, rt
    sab.gate.set()
    rt.close()


def test_a_stage_that_raises_costs_only_the_new_work(sabotaged):
    sab, rt = sabotaged
    first, body = _session(rt, sab)
    sab.mode = "raise"
    later = send(rt, body)
    assert later.outcome.fallback == "decided" and later.outcome.body is not None
    assert later.outcome.reason == "stage saboteur error: RuntimeError: saboteur failed on purpose"
    assert not _has_mark(later.body)
    _decided_prefix(first, later)
    assert _stubs(later.body)  # what clearing decided in this request before the failure is stored: it goes
    assert later.ctx.tokens_out < later.ctx.tokens_in
    [err] = [e for e in later.events("error") if e.get("where") == "stage"]
    assert err["stage"] == "saboteur" and err["action"] == "forwarded the session's decided state"
    # the re-applied decisions are events marked as the fall-back's (not counted again)
    assert any(e.get("fallback") is True and e["reused"] for e in later.events("compaction"))
    # and the same request without a failure carries the same decisions, plus its new work
    sab.mode = "ok"
    again = send(rt, body)
    assert again.outcome.fallback is None and _has_mark(again.body)
    assert orjson.dumps(again.body["messages"][:-1]) == orjson.dumps(later.body["messages"][:-1])


def test_a_stage_past_its_budget_the_decided_state_is_built_on_a_fresh_request(sabotaged):
    sab, rt = sabotaged
    first, body = _session(rt, sab)
    sab.mode = "hang"
    later = send(rt, body)
    assert later.outcome.fallback == "decided", later.outcome.reason
    assert later.outcome.reason == f"stage saboteur timeout: ran past its {SABOTEUR_BUDGET_MS} ms budget"
    # the abandoned call wrote into ctx.request before the fall-back was built: none of it went
    assert "CORRUPTED" not in later.raw.decode() and not _has_mark(later.body)
    _decided_prefix(first, later)
    stages = [(e["stage"], e["status"]) for e in later.events("stage")]
    assert stages == [("clearing", "ok"), ("compaction", "ok"), ("saboteur", "timeout")]
    # the abandoned call goes on writing to its request's typed messages: none of them is lent on
    sab.gate.set()
    assert sab.returned.wait(10)
    # what the abandoned call emitted after its request went out is marked late
    assert later.events("saboteur") == [{"done": True, "api": "anthropic", "late": True}]
    wait_until(lambda: rt.overrun_since("saboteur") is None, 10, interval=0.01)
    sab.mode = "ok"
    again = send(rt, body)
    assert again.outcome.fallback is None and "CORRUPTED" not in again.raw.decode()
    assert orjson.dumps(again.body["messages"][:-1]) == orjson.dumps(later.body["messages"][:-1])


def test_a_breaker_skipped_clearing_re_applies_its_records_in_place(cw_home, monkeypatch):
    sab = Saboteur()
    rt = _runtime(cw_home, sab, budgets={"clearing": 300})
    gate, entered = threading.Event(), threading.Event()
    real = clearing._clear

    def slow_clear(ctx, decide):
        if decide and hang["on"]:
            entered.set()
            gate.wait(30)
        return real(ctx, decide)

    hang = {"on": False}
    monkeypatch.setattr(clearing, "_clear", slow_clear)
    try:
        first, body = _session(rt, sab)
        hang["on"] = True
        # 1. clearing overruns: the request goes out as the decided state (clearing's re-apply is not slow)
        one = send(rt, body)
        assert entered.is_set() and one.outcome.fallback == "decided", one.outcome.reason
        assert one.outcome.reason.startswith("stage clearing timeout")
        _decided_prefix(first, one)
        # 2. while that call still runs, clearing is skipped and its records re-applied in its place;
        # the other stages run, their new work included
        two = send(rt, body)
        assert two.outcome.fallback is None and two.outcome.body is not None, two.outcome.reason
        st = {e["stage"]: e for e in two.events("stage")}
        assert st["clearing"]["status"] == "skipped" and st["clearing"]["reapplied"] is True
        assert st["compaction"]["status"] == "ok" and st["saboteur"]["status"] == "ok"
        assert _has_mark(two.body)
        assert orjson.dumps(two.body["messages"][:-1]) == orjson.dumps(one.body["messages"][:-1])
        [skip] = [e for e in two.events("error") if e.get("stage") == "clearing"]
        assert skip["action"] == "stage skipped, its decisions re-applied, other stages ran"
    finally:
        gate.set()
        rt.close()


def test_when_re_applying_fails_the_original_goes_with_an_event(sabotaged, monkeypatch):
    sab, rt = sabotaged
    real = compaction._compact

    def broken(ctx, decide):
        if not decide:
            raise ValueError("stored summary unreadable")
        return real(ctx, decide)

    _, body = _session(rt, sab)
    monkeypatch.setattr(compaction, "_compact", broken)
    sab.mode = "raise"
    later = send(rt, body)
    assert later.outcome.fallback == "original" and later.outcome.body is None
    assert later.raw == orjson.dumps(body)
    assert "re-applying compaction failed: ValueError: stored summary unreadable" in later.outcome.fallback_reason
    [re] = [e for e in later.events("error") if e.get("where") == "reapply"]
    assert re["stage"] == "compaction" and re["action"] == "forwarded original"
    [err] = [e for e in later.events("error") if e.get("where") == "stage"]
    assert err["action"] == "forwarded original"


def test_new_work_that_would_go_above_the_window_is_left_out(sabotaged):
    sab, rt = sabotaged
    first, body = _session(rt, sab)
    sab.mode = "bloat"  # ~40K tokens of new work on a 30K window
    later = send(rt, body)
    window = rt.settings.tokens.context_window
    assert later.outcome.fallback == "decided", later.outcome.reason
    assert "above the window" in later.outcome.reason
    assert not _has_mark(later.body) and later.ctx.tokens_out <= window
    assert rt.tokens.count_request(ApiKind.ANTHROPIC, later.body) <= window
    _decided_prefix(first, later)


def test_a_session_without_decisions_falls_back_to_its_own_bytes(sabotaged):
    sab, rt = sabotaged
    sab.mode = "raise"
    body = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    sent = send(rt, body)
    assert sent.outcome.fallback == "decided" and sent.outcome.body is None
    assert sent.raw == orjson.dumps(body)


def test_adaptive_budgets_follow_the_recent_p95_within_the_profile_bounds(cw_home):
    rt = Runtime(load_settings("default", cw_home, overrides={"memory": {"enabled": False}}), cw_home, log=False)
    try:
        p = rt.settings.pipeline
        t = StageTimes()
        assert t.budget("x", p).ms == p.stage_budget_ms  # too few calls: the fixed budget
        for _ in range(p.budget_min_samples):
            t.record("x", 1.0, p.budget_window)
        b = t.budget("x", p)
        assert b.p95_ms == 1.0 and b.ms == p.stage_budget_ms  # the floor: the fixed budget
        assert t.budget("x", p.model_copy(update={"budget_floor_ms": 10.0})).ms == 10.0  # a profile's lower floor
        for _ in range(p.budget_window):
            t.record("x", p.stage_budget_ms, p.budget_window)  # a busy machine: calls past their budget
        b = t.budget("x", p)
        assert b.ms == 4 * p.stage_budget_ms and b.ms > b.fixed_ms  # stretched, up to the ceiling (4x the fixed)
        assert "adaptive" in b.describe() and f"{b.ms:.0f} ms" in b.describe()
        for _ in range(p.budget_window // 2):
            t.record("x", p.stage_budget_ms / 10, p.budget_window)  # it calms down: half the window is quick
        assert t.budget("x", p).ms == 4 * p.stage_budget_ms  # the p95 still sees the slow half
        q = p.model_copy(update={"budget_ceiling_ms": 600.0})
        assert t.budget("x", q).ms == 600.0
        assert t.budget("x", p.model_copy(update={"adaptive_budgets": False})).ms == p.stage_budget_ms
    finally:
        rt.close()


def test_the_forward_totals_count_fall_backs():
    from contextwarden.core.liveprotocol import Totals

    t = Totals()
    t.add({"type": "forward", "data": {"changed": True, "fallback": "decided"}})
    t.add({"type": "forward", "data": {"changed": False, "fallback": "original"}})
    t.add({"type": "forward", "data": {"changed": True, "fallback": None}})
    t.add({"type": "clearing", "data": {"tokens_freed": 100, "new": 0, "fallback": True}})
    t.add({"type": "compaction", "data": {"applied": True, "reused": False, "tokens_before": 900, "tokens_after": 100,
                                          "late": True}})
    assert (t.fallback, t.fallback_original, t.tokens_freed, t.compactions) == (2, 1, 0, 1)


def test_stripped_envelopes_stay_stripped_in_the_decided_state(cw_home):
    """strip.rewrite_outgoing rewrites every user message the same way on every request: the decided
    state has that rewrite too (strip's cw_reapply), so a fall-back keeps the cached prefix."""
    from tests.plugins.test_strip import anthropic_body

    sab = Saboteur()
    overrides = {"pipeline": {"order": ["strip", "saboteur"], "disabled": ["budget", "tagging", "clearing", "compression", "compaction", "memory"],
                              "stage_budget_ms": 20_000, "adaptive_budgets": False},
                 "strip": {"rewrite_outgoing": True}, "memory": {"enabled": False}}
    rt = Runtime(load_settings("default", cw_home, overrides=overrides), cw_home, profile="default", log=False,
                 extra_plugins=[("saboteur", sab)])
    try:
        body = anthropic_body()
        normal = send(rt, body)
        assert normal.outcome.fallback is None and "[vc:prompt]" not in normal.raw.decode()
        sab.mode = "raise"
        later = send(rt, body)
        assert later.outcome.fallback == "decided" and later.outcome.body is not None
        assert orjson.dumps(later.body["messages"][:-1]) == orjson.dumps(normal.body["messages"][:-1])
        assert "[vc:prompt]" not in later.raw.decode() and not _has_mark(later.body)
    finally:
        rt.close()


class EarlyStarter:
    """A stage with cw_request_start: records what it saw before any stage ran, or raises."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.seen = []

    @hookimpl
    def cw_request_start(self, ctx) -> None:
        if self.fail:
            raise RuntimeError("early start failed on purpose")
        self.seen.append([r["stage"] for r in ctx.stage_results])  # before every stage
        ctx.notes["started_early"] = True

    @hookimpl
    def cw_request(self, ctx) -> None:
        ctx.emit("early", started=bool(ctx.notes.get("started_early")))


@pytest.mark.parametrize("fail", [False, True], ids=["starts", "raises"])
def test_request_start_runs_before_the_stages_and_a_failing_one_changes_nothing_else(cw_home, fail):
    early = EarlyStarter(fail)
    overrides = {"pipeline": {"order": ["clearing", "early"], "disabled": ["budget", "strip", "tagging", "memory"]},
                 "memory": {"enabled": False}}
    rt = Runtime(load_settings("default", cw_home, overrides=overrides), cw_home, profile="default", log=False,
                 extra_plugins=[("early", early)])
    try:
        sent = send(rt, anthropic_tool_loop(3, result_words=50))
        assert sent.outcome.fallback is None and sent.events("stage")  # the stages ran, nothing fell back
        assert [e["started"] for e in sent.events("early")] == [not fail]
        errors = [e for e in sent.events("error") if e.get("where") == "request_start"]
        if fail:
            assert errors and errors[0]["stage"] == "early" and "on purpose" in errors[0]["message"]
        else:
            assert early.seen == [[]] and not errors
    finally:
        rt.close()
