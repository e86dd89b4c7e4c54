"""The per-stage breaker: a stage whose last call overran its budget and is still running is skipped."""

from __future__ import annotations

import threading
import time

import orjson

from contextwarden import hookimpl
from contextwarden.core.runtime import Runtime
from contextwarden.models.anthropic import TextBlock
from contextwarden.models.base import ApiKind
from contextwarden.request import lifecycle
from tests.support.stages import stage_runtime
from tests.support.wait import wait_until

BUDGET_MS = 200


class SlowStage:
    """Blocks until the test opens the gate (the first call only), then appends a marker."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls = 0
        self.returned = threading.Event()

    @hookimpl
    def cw_request(self, ctx) -> None:
        self.calls += 1
        if self.calls == 1:
            self.gate.wait(30)
            self.returned.set()
            return
        _append(ctx, "[slow]")


class Appender:
    @hookimpl
    def cw_request(self, ctx) -> None:
        _append(ctx, "[fast]")


def _append(ctx, text: str) -> None:
    last = ctx.request.messages[-1]
    blocks = [TextBlock(type="text", text=last.content)] if isinstance(last.content, str) else list(last.content)
    ctx.request.messages[-1] = last.model_copy(update={"content": blocks + [TextBlock(type="text", text=text)]})


def _runtime(tmp_path, slow: SlowStage) -> Runtime:
    return stage_runtime(tmp_path / "home", [("slow", slow), ("fast", Appender())], stage_budget_ms=BUDGET_MS)


def _send(rt: Runtime, n: int):
    raw = orjson.dumps({"model": "claude-sonnet-4-5", "max_tokens": 10,
                        "metadata": {"user_id": "user_x_account_y_session_breaker"},
                        "messages": [{"role": "user", "content": f"hello {n}"}]})
    t0 = time.perf_counter()
    ctx, outcome = lifecycle.send(rt, ApiKind.ANTHROPIC, "api.anthropic.com", "/v1/messages",
                                  [("content-type", "application/json"), ("x-api-key", "sk-test")], raw, f"flow-{n}")
    ms = (time.perf_counter() - t0) * 1000
    events = [e for e in rt.bus.recent if e.flow_id == ctx.flow_id]
    sent = orjson.loads(outcome.body) if outcome.body is not None else ctx.original
    return outcome, sent, events, ms


def _texts(sent) -> list[str]:
    c = sent["messages"][-1]["content"]
    return [c] if isinstance(c, str) else [b["text"] for b in c]


def test_a_stage_still_running_past_its_budget_is_skipped_until_it_returns(tmp_path):
    slow = SlowStage()
    rt = _runtime(tmp_path, slow)
    try:
        # 1. the first call overruns: abandoned at its budget, the original goes out, with an error event
        out1, sent1, ev1, ms1 = _send(rt, 1)
        assert out1.body is None and out1.reason.startswith("stage slow timeout")
        assert _texts(sent1) == ["hello 1"]
        assert any(e.type == "error" and e.data.get("stage") == "slow" for e in ev1)
        assert [(e.data["stage"], e.data["status"]) for e in ev1 if e.type == "stage"] == [("slow", "timeout")]
        assert rt.overrun_since("slow") is not None

        # 2. while that call still runs: skipped at once (not called, not waited for), the other stages run.
        # Orderings and events, not wall-clock bounds (a loaded machine stretches every duration): the
        # request is done while the first call is still held at its gate.
        out2, sent2, ev2, ms2 = _send(rt, 2)
        assert slow.calls == 1  # no second thread queued behind the stuck one
        assert not slow.returned.is_set() and rt.overrun_since("slow") is not None
        [slow2] = [e.data for e in ev2 if e.type == "stage" and e.data["stage"] == "slow"]
        assert slow2["status"] == "skipped" and slow2["ms"] == 0.0
        skipped = [e for e in ev2 if e.type == "error" and e.data.get("stage") == "slow"]
        assert skipped and skipped[0].data["action"].startswith("stage skipped") and skipped[0].data["reason"]
        st = [e.data for e in ev2 if e.type == "stage"]
        assert [(s["stage"], s["status"]) for s in st] == [("slow", "skipped"), ("fast", "ok")]
        assert out2.body is not None and _texts(sent2) == ["hello 2", "[fast]"]

        # 3. once it returns, it runs again
        slow.gate.set()
        assert slow.returned.wait(5)
        assert wait_until(lambda: rt.overrun_since("slow") is None, 5, interval=0.01)
        assert any(e.type == "stage_recovered" and e.data["stage"] == "slow" for e in rt.bus.recent)
        out3, sent3, ev3, _ = _send(rt, 3)
        assert slow.calls == 2
        assert [(e.data["stage"], e.data["status"]) for e in ev3 if e.type == "stage"] == [("slow", "ok"), ("fast", "ok")]
        assert _texts(sent3) == ["hello 3", "[slow]", "[fast]"]
        assert not [e for e in ev3 if e.type == "error"]
    finally:
        slow.gate.set()
        rt.close()
