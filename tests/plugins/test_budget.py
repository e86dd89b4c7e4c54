"""Budgets per session and agent: levels, persistence, agent keys, and BLOCKED as real SDKs see it."""

from __future__ import annotations

import copy
import json
import textwrap

import orjson
import pytest

from contextwarden.core.runtime import Runtime
from contextwarden.models import ApiKind
from contextwarden.plugins import budget as B
from contextwarden.plugins.budget import Level, blocked_response, level_for
from contextwarden.request import lifecycle
from contextwarden.request.agents import derive_agent, normalise_system
from contextwarden.settings import load_settings
from contextwarden.wire.streams.turn import AssembledTurn, Usage
from tests.conftest import EVAL_DIR
from tests.support.sdk import anthropic, openai

CC_TURN1 = EVAL_DIR / "requests" / "claude-code-2.1.197-turn1.json"
CC_TURN2 = EVAL_DIR / "requests" / "claude-code-2.1.197-turn2.json"
OTHER_STAGES = ["strip", "tagging", "clearing", "compaction", "memory"]


def test_levels():
    assert level_for(0, 0, 0.7, 0.9) is Level.NORMAL  # no limit
    assert level_for(699, 1000, 0.7, 0.9) is Level.NORMAL
    assert level_for(700, 1000, 0.7, 0.9) is Level.REDUCED
    assert level_for(900, 1000, 0.7, 0.9) is Level.MINIMAL
    assert level_for(1000, 1000, 0.7, 0.9) is Level.BLOCKED
    assert Level.REDUCED == "REDUCED" and Level.MINIMAL.rank > Level.REDUCED.rank


# ---------------------------------------------------------------------------- agent keys


def cc_body(path=CC_TURN2):
    return json.loads(path.read_text())


def test_main_agent_key_is_stable_across_turns_versions_dates_and_models():
    t1, t2 = cc_body(CC_TURN1), cc_body(CC_TURN2)
    k = derive_agent("claude-code", {}, t1, "sess")
    assert k == "sess/main" == derive_agent("claude-code", {}, t2, "sess")
    later = copy.deepcopy(t2)
    later["system"][0]["text"] = "x-anthropic-billing-header: cc_version=2.1.198.aaa; cc_entrypoint=cli;"
    later["system"][2]["text"] = later["system"][2]["text"].replace("claude-opus-4-8", "claude-sonnet-4-6") + \
        "\n<env>\nToday's date: 2026-11-22\n</env>\ngitStatus: This is the git status at the start\nCurrent branch: main\n"
    assert derive_agent("claude-code", {}, later, "sess") == k


def subagent(body, prompt="You are a file search specialist for Claude Code. Find files fast.", date="2026-11-21"):
    b = copy.deepcopy(body)
    b["system"] = [b["system"][0], b["system"][1],
                   {"type": "text", "text": f"{prompt}\n\nNotes:\n- Today's date is {date}.\n- Working directory: /repo"}]
    return b


def test_subagents_get_their_own_stable_keys():
    t2 = cc_body()
    explore = derive_agent("claude-code", {}, subagent(t2), "sess")
    assert explore.startswith("sess/") and explore != "sess/main"
    assert derive_agent("claude-code", {}, subagent(t2, date="2026-12-01"), "sess") == explore
    other = derive_agent("claude-code", {}, subagent(t2, prompt="You review code for security problems."), "sess")
    assert other not in (explore, "sess/main")
    assert "2026-11-21" not in normalise_system(subagent(t2)) and "file search specialist" in normalise_system(subagent(t2))
    assert normalise_system({"system": "Release by 2026-01-05T10:00:00Z."}) == "Release by <date>."


def test_other_agent_rules():
    body = cc_body()
    assert derive_agent("session", {}, body, "s") == "s"
    assert derive_agent("header", {"x-contextwarden-agent": "planner"}, body, "s") == "planner"
    assert derive_agent("header", {}, body, "s") == "s"
    assert derive_agent("claude-code", {"x-contextwarden-agent": "planner"}, body, "s") == "planner"
    assert derive_agent("claude-code", {}, {"messages": []}, "s") == "s"


# ---------------------------------------------------------------------------- through the pipeline


def runtime(home, **budget):
    b = {"enabled": True, **budget}
    settings = load_settings(None, home, overrides={"pipeline": {"disabled": OTHER_STAGES}, "budget": b,
                                                    "memory": {"enabled": False}})
    return Runtime(settings, home, log=False)


def request(rt, body, api=ApiKind.ANTHROPIC, headers=(), path="/v1/messages"):
    ctx, outcome = lifecycle.send(rt, api, "api.anthropic.com", path, [("content-type", "application/json"), *headers],
                                  orjson.dumps(body), "f")
    if ctx.tokens_out is None:
        ctx.tokens_out = ctx.tokens_in
    return ctx, outcome


def complete(rt, ctx, usage: Usage | None, error=None):
    turn = AssembledTurn(api=ctx.api, model=ctx.model, message={"role": "assistant", "content": []}, text="", tool_calls=[],
                         usage=usage, stop_reason="end_turn", error=error, complete=error is None, events=1)
    rt.pm.hook.cw_turn_complete(ctx=ctx, turn=turn)


def small(session="s1", text="hello"):
    return {"model": "claude-sonnet-4-5", "max_tokens": 10, "metadata": {"user_id": f"user_x_account_y_session_{session}"},
            "messages": [{"role": "user", "content": text}]}


def test_levels_rise_with_provider_use_and_block(cw_home):
    rt = runtime(cw_home, session_tokens=1000)
    try:
        sid = "aaaaaaaa-0000-0000-0000-000000000001"
        seen = []
        for use in (700, 200, 50, 50):
            ctx, out = request(rt, small(sid))
            seen.append(ctx.notes["level"])
            assert out.blocked is None
            complete(rt, ctx, Usage(input_tokens=use // 10, cache_read_input_tokens=use - use // 10, output_tokens=3))
        assert seen == [Level.NORMAL, Level.REDUCED, Level.MINIMAL, Level.MINIMAL]
        ctx, out = request(rt, small(sid))
        assert ctx.notes["level"] is Level.BLOCKED and out.blocked is not None
        assert out.blocked.status == 429 and out.blocked.headers["retry-after"] == "60"
        err = orjson.loads(out.blocked.body)
        assert err["type"] == "error" and err["error"]["type"] == "rate_limit_error"
        assert "1,000 of 1,000" in err["error"]["message"] and "session" in err["error"]["message"]
        ev = [e.data for e in rt.bus.recent if e.type == "budget"]
        assert [e["level"] for e in ev] == ["NORMAL", "REDUCED", "MINIMAL", "MINIMAL", "BLOCKED"]
        assert ev[-1]["used"] == 1000 and ev[-1]["limit"] == 1000 and ev[-1]["scope"] == "session"
        # a blocked request adds nothing
        complete(rt, ctx, None, error={"type": "rate_limit_error", "message": "x"})
        assert B.used(rt.state, f"session:{sid}") == 1000
        # another session is unaffected
        ctx, out = request(rt, small("bbbbbbbb-0000-0000-0000-000000000002"))
        assert ctx.notes["level"] is Level.NORMAL and out.blocked is None
    finally:
        rt.close()


def test_use_survives_a_restart(cw_home):
    sid = "cccccccc-0000-0000-0000-000000000003"
    rt = runtime(cw_home, session_tokens=500)
    ctx, _ = request(rt, small(sid))
    complete(rt, ctx, Usage(input_tokens=600))
    rt.close()
    rt2 = runtime(cw_home, session_tokens=500)
    try:
        ctx, out = request(rt2, small(sid))
        assert out.blocked is not None and ctx.notes["level"] == "BLOCKED"
    finally:
        rt2.close()


def test_without_usage_the_calibrated_estimate_counts(cw_home):
    rt = runtime(cw_home, session_tokens=10_000)
    try:
        sid = "dddddddd-0000-0000-0000-000000000004"
        ctx, _ = request(rt, small(sid, "word " * 200))
        complete(rt, ctx, None)
        assert B.used(rt.state, f"session:{sid}") == ctx.tokens_out > 200
        rt.tokens.observe_usage(ctx.model, 100, Usage(input_tokens=150))  # factor 1.5
        ctx, _ = request(rt, small(sid, "word " * 200))
        complete(rt, ctx, None)
        assert B.used(rt.state, f"session:{sid}") == ctx.tokens_out + round(ctx.tokens_out * 1.5)
        complete(rt, ctx, None, error={"type": "overloaded_error", "message": "busy"})  # not billed
        assert B.used(rt.state, f"session:{sid}") == ctx.tokens_out + round(ctx.tokens_out * 1.5)
    finally:
        rt.close()


def test_agent_budgets_separate_main_agent_and_subagent(cw_home):
    rt = runtime(cw_home, agent_tokens=1000)
    try:
        main, sub = cc_body(), subagent(cc_body())
        ctx, _ = request(rt, sub)
        assert ctx.agent != ctx.session + "/main"
        complete(rt, ctx, Usage(input_tokens=1200))
        ctx, out = request(rt, sub)
        assert out.blocked is not None and ctx.notes["budget"][0]["scope"] == "agent"
        assert f"agent {ctx.agent}" in orjson.loads(out.blocked.body.split(b"data: ", 1)[1])["error"]["message"]
        ctx, out = request(rt, main)  # the main agent has used nothing
        assert out.blocked is None and ctx.notes["level"] == "NORMAL" and ctx.agent.endswith("/main")
    finally:
        rt.close()


def test_disabled_budget_does_nothing(cw_home):
    settings = load_settings(None, cw_home, overrides={"pipeline": {"disabled": OTHER_STAGES}, "budget": {"session_tokens": 1},
                                                       "memory": {"enabled": False}})
    rt = Runtime(settings, cw_home, log=False)
    try:
        ctx, out = request(rt, small("eeeeeeee-0000-0000-0000-000000000005"))
        complete(rt, ctx, Usage(input_tokens=50))
        ctx, out = request(rt, small("eeeeeeee-0000-0000-0000-000000000005"))
        assert out.blocked is None and "level" not in ctx.notes
        assert B.snapshot(rt.state) == {}
    finally:
        rt.close()


def test_blocked_formats():
    s, body, h = blocked_response(ApiKind.ANTHROPIC, True, "over budget", 30)
    assert s == 429 and h["content-type"].startswith("text/event-stream") and h["retry-after"] == "30"
    assert body.startswith(b"event: error\ndata: ") and body.endswith(b"\n\n")
    assert orjson.loads(body[len(b"event: error\ndata: "):]) == {"type": "error", "error": {"type": "rate_limit_error", "message": "over budget"}}
    s, body, h = blocked_response(ApiKind.OPENAI_CHAT, True, "over budget", 30)
    assert orjson.loads(body) == {"error": {"message": "over budget", "type": "tokens", "param": None, "code": "rate_limit_exceeded"}}
    s, body, h = blocked_response(ApiKind.OLLAMA_CHAT, False, "over budget", 30)
    assert orjson.loads(body) == {"error": "over budget"}


# ---------------------------------------------------------------------------- real SDKs, real proxy


@pytest.fixture(scope="module")
def blocked_proxy(tmp_path_factory):
    """A real mitmdump (reverse mode) in front of the stand-in upstream, with tiny session budgets."""
    from tests.support.proxy import ProxyProcess
    from tests.support.upstream import StandIn

    work = tmp_path_factory.mktemp("budget-e2e")
    profile = work / "budget.yaml"
    profile.write_text(textwrap.dedent(f"""\
        extends: claude-code
        name: budget-e2e
        pipeline:
          disabled: {OTHER_STAGES}
        budget:
          enabled: true
          session_tokens: 20
          retry_after_s: 42
        memory:
          enabled: false
        """))
    with StandIn() as upstream, ProxyProcess(work, profile=str(profile), reverse=upstream.url) as proxy:
        yield proxy, upstream


def _use_up(proxy, session, send):
    """The first request passes; wait until its turn is accounted, so the next one is BLOCKED."""
    mark = proxy.mark()
    send()
    turns = proxy.wait_events(lambda e: e["type"] == "turn" and e["session"] == session, since=mark, timeout=20)
    assert turns, proxy.output_text()[-3000:]


def test_anthropic_sdk_sees_a_rate_limit_error(blocked_proxy):
    proxy, upstream = blocked_proxy
    sid = "sdk-anthropic-json"
    client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-test", max_retries=0,
                                 default_headers={"x-contextwarden-session": sid})
    send = lambda: client.messages.create(model="claude-opus-4-8", max_tokens=20, messages=[{"role": "user", "content": "hi " * 50}])
    _use_up(proxy, sid, send)
    n_upstream = len(upstream.requests())
    with pytest.raises(anthropic.RateLimitError) as ei:
        send()
    e = ei.value
    assert e.status_code == 429 and e.response.headers["retry-after"] == "42"
    assert e.body["error"]["type"] == "rate_limit_error" and "budget" in e.body["error"]["message"]
    assert len(upstream.requests()) == n_upstream  # never reached the upstream


def test_anthropic_sdk_stream_sees_a_rate_limit_error(blocked_proxy):
    proxy, upstream = blocked_proxy
    sid = "sdk-anthropic-stream"
    client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-test", max_retries=0,
                                 default_headers={"x-contextwarden-session": sid})

    def send():
        with client.messages.stream(model="claude-opus-4-8", max_tokens=20, messages=[{"role": "user", "content": "hi " * 50}]) as s:
            return s.get_final_message()

    _use_up(proxy, sid, send)
    with pytest.raises(anthropic.RateLimitError) as ei:
        send()
    e = ei.value
    assert e.status_code == 429 and e.response.headers["retry-after"] == "42"
    assert e.response.headers["content-type"].startswith("text/event-stream")
    assert "rate_limit_error" in e.message and "budget" in e.message


def test_openai_sdk_sees_a_rate_limit_error(blocked_proxy):
    proxy, upstream = blocked_proxy
    sid = "sdk-openai"
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-test", max_retries=0,
                           default_headers={"x-contextwarden-session": sid})
    send = lambda: client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi " * 50}])
    _use_up(proxy, sid, send)
    with pytest.raises(openai.RateLimitError) as ei:
        send()
    e = ei.value
    assert e.status_code == 429 and e.response.headers["retry-after"] == "42"
    assert e.code == "rate_limit_exceeded" and e.type == "tokens" and "budget" in e.message
    # the stream variant gets the same JSON error
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "again"}], stream=True)
    budget = proxy.events("budget", level="BLOCKED")
    assert budget and budget[-1]["data"]["limit"] == 20
