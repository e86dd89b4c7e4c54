"""The stage author's contract (docs/ARCHITECTURE.md, "What a stage author may and may not do"), one case
per line of that list, each through the real lifecycle with a probe stage: what a stage may do goes
upstream; what it may not fails loudly (an ``error`` event, the stage's status) and the client's request
still goes, without the stage's work.

Other lines of the list have their own tests: no module-level state (tests/contextwarden/core/test_runtime_state.py),
``ctx.notes`` keys declared (tests/contextwarden/request/test_notes.py), a breaker-skipped stage re-applied (tests/contextwarden/request/test_breaker.py).
"""

from __future__ import annotations

import time

import orjson
import pytest

from contextwarden import hookimpl
from contextwarden.models import anthropic as am
from contextwarden.models.base import ApiKind
from contextwarden.request import lifecycle
from tests.contextwarden.wire.test_history import conversation
from tests.support.stages import stage_runtime


class Probe:
    def __init__(self, act) -> None:
        self.act = act

    @hookimpl
    def cw_request(self, ctx) -> None:
        self.act(ctx)


def _run(tmp_path, act, budget_ms: float = 20_000):
    rt = stage_runtime(tmp_path / "home", [("probe", Probe(act))], stage_budget_ms=budget_ms, adaptive_budgets=False)
    try:
        msgs = conversation(2)
        raw = orjson.dumps({"model": "claude-sonnet-4-5", "max_tokens": 10, "system": "be brief", "messages": msgs})
        ctx, out = lifecycle.send(rt, ApiKind.ANTHROPIC, "api.anthropic.com", "/v1/messages",
                                  [("content-type", "application/json"), ("x-api-key", "sk-test")], raw, "flow-1")
        events = [e for e in rt.bus.recent if e.flow_id == ctx.flow_id]
        return ctx, out, events, msgs
    finally:
        rt.close()


def _text_copy(ctx, i=-1, text="edited"):
    """A copy of message ``i`` with its text blocks replaced by one (its tool results kept)."""
    m = ctx.request.messages[i]
    kept = [b for b in m.content if not isinstance(b, am.TextBlock)]
    return m.model_copy(update={"content": kept + [am.TextBlock(type="text", text=text)]})


# ---------------------------------------------------------------------------------------------------
# may


def _replace(ctx):
    ctx.request.messages[-1] = _text_copy(ctx)


def _assign_list(ctx):
    ctx.request.messages = list(ctx.request.messages[:-1]) + [_text_copy(ctx)]


def _memo_and_runtime_cache(ctx):
    seen = ctx.runtime.memo("probe.seen", dict)
    last = ctx.request.messages[-1]
    n = ctx.history.memo(last, ("probe", "len"), lambda: len(last.content))
    seen["n"] = n
    ctx.emit("probe", blocks=n)
    ctx.request.messages[-1] = _text_copy(ctx, text=f"{n} blocks")


def _block(ctx):
    ctx.block(429, b'{"type":"error"}', {"content-type": "application/json"})


@pytest.mark.parametrize("act,last_text", [(_replace, "edited"), (_assign_list, "edited"),
                                           (_memo_and_runtime_cache, "2 blocks")])
def test_what_a_stage_may_do_goes_upstream(tmp_path, act, last_text):
    ctx, out, events, msgs = _run(tmp_path, act)
    assert out.reason == "rewritten" and out.fallback is None, out
    sent = orjson.loads(out.body)
    assert sent["messages"][-1]["content"] == [msgs[-1]["content"][0], {"type": "text", "text": last_text}]
    assert sent["messages"][:-1] == msgs[:-1] and sent["system"] == "be brief"
    assert ctx.original["messages"] == msgs  # the client's body is untouched
    assert [e.data["status"] for e in events if e.type == "stage"] == ["ok"]


def test_a_stage_may_answer_the_client_itself(tmp_path):
    _, out, events, _ = _run(tmp_path, _block)
    assert out.blocked is not None and out.blocked.status == 429 and out.reason == "blocked by probe"


# ---------------------------------------------------------------------------------------------------
# may not


def _mutate_block(ctx):
    ctx.request.messages[-1].content[0].text = "changed in place"


def _append_block(ctx):
    ctx.request.messages[-1].content.append(am.TextBlock(type="text", text="appended in place"))


def _touch_system(ctx):
    ctx.request.system = "a different system prompt"


def _break_tool_pair(ctx):
    # the tool_result answering the first tool_use goes: its call is left unanswered
    m = ctx.request.messages[2]
    ctx.request.messages[2] = m.model_copy(update={"content": [b for b in m.content if b.type != "tool_result"]})


def _overrun(ctx):
    time.sleep(1.5)  # the behaviour under test: a call that runs past its budget (a wait, not work)


@pytest.mark.parametrize("act,status,where", [
    (_mutate_block, "error", "stage"),      # typed blocks are frozen
    (_append_block, "error", "stage"),      # a message's block list is a FrozenList
    (_touch_system, "ok", "validator"),     # system and tools are the cached prefix
    (_break_tool_pair, "ok", "validator"),  # tool pairs and role order hold
])
def test_what_a_stage_may_not_do_fails_loudly_and_the_request_still_goes(tmp_path, act, status, where):
    ctx, out, events, msgs = _run(tmp_path, act)
    assert [e.data["status"] for e in events if e.type == "stage"] == [status]
    assert any(e.type == "error" and e.data.get("where") == where for e in events), [e.type for e in events]
    assert out.fallback in ("decided", "original") or out.body is None  # without the stage's work
    sent = orjson.loads(out.body) if out.body is not None else ctx.original
    assert sent["messages"] == msgs and sent["system"] == "be brief"
    assert ctx.history.entries[-1].obj.wire() == msgs[-1]  # the shared typed message is unchanged


def test_a_stage_past_its_budget_is_abandoned_and_the_decided_state_goes(tmp_path):
    _, out, events, msgs = _run(tmp_path, _overrun, budget_ms=50)
    assert [e.data["status"] for e in events if e.type == "stage"] == ["timeout"]
    assert out.fallback in ("decided", "original")
    assert orjson.loads(out.body)["messages"] == msgs if out.body is not None else True
