"""The real addon script under mitmproxy's test harness (taddons/tflow): interception and fail-open."""

from __future__ import annotations

import asyncio
import gzip
import json
import textwrap
import threading
from pathlib import Path

import orjson
import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow, tutils

from contextwarden.core.events import read_log
from tests.conftest import EVAL_DIR

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "addons" / "contextwarden.py"
CC_TURN2 = EVAL_DIR / "requests" / "claude-code-2.1.197-turn2.json"  # ../shared or $CONTEXTWARDEN_SHARED


def body(messages=None, **kw) -> bytes:
    return json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 100,
                       "messages": messages or [{"role": "user", "content": "hello"}], **kw}).encode()


def anthropic_flow(content: bytes, path="/v1/messages?beta=true", host="api.anthropic.com", headers=None):
    h = [(b"content-type", b"application/json"), (b"x-api-key", b"sk-ant-test-SECRET"),
         (b"anthropic-version", b"2023-06-01")] + [(k.encode(), v.encode()) for k, v in (headers or [])]
    req = tutils.treq(host=host, port=443, scheme=b"https", method=b"POST", path=path.encode(),
                      headers=__import__("mitmproxy").http.Headers(h), content=content)
    return tflow.tflow(req=req)


class Harness:
    def __init__(self, tctx, script):
        self.tctx = tctx
        self.script = script
        # tctx.script returns the loaded script module itself
        self.warden = script.warden
        by_name = {type(a).__name__: a for a in script.addons}
        self.interceptor, self.observer = by_name["Interceptor"], by_name["Observer"]

    @property
    def runtime(self):
        return self.warden.runtime

    async def send(self, flow):
        await self.interceptor.request(flow)
        st = flow.metadata.get("contextwarden")
        if st is not None and st.ctx_future is not None:
            await st.ctx_future
        return flow

    def events(self, type=None):
        return [e for e in self.runtime.bus.recent if type is None or e.type == type]


@pytest.fixture
def harness_factory(tmp_path):
    stack = []

    def make(profile="claude-code", plugins: dict[str, str] | None = None, profile_yaml: str | None = None, **opts):
        tctx = taddons.context()
        tctx.__enter__()
        stack.append([tctx, None])
        kw = {"cw_home": str(tmp_path / "home"), "cw_engine": False}  # the chain in this process
        if plugins:
            d = tmp_path / "plugins"
            d.mkdir(exist_ok=True)
            for name, src in plugins.items():
                (d / f"{name}.py").write_text(textwrap.dedent(src))
            kw["cw_plugins"] = str(d)
        if profile_yaml:
            p = tmp_path / "profile.yaml"
            p.write_text(textwrap.dedent(profile_yaml))
            profile = str(p)
        # the options the script's first configure() sees (set once its load() adds them): no engine
        # process and no default profile's runtime started for nothing before the real one (built by
        # the configure below, which raises a bad profile's error)
        tctx.options.update_defer(cw_profile="observe-only", **kw)
        sc = stack[-1][1] = tctx.script(str(SCRIPT))
        # tctx.script registers the module (load() ran, options exist) but does not chain it as the
        # script loader would, so option changes would not reach configure() without this
        tctx.master.addons.chain.append(sc)
        tctx.configure(sc, cw_profile=profile, **kw, **opts)
        return Harness(tctx, sc)

    yield make
    for tctx, sc in reversed(stack):
        if sc is not None:  # as at mitmdump's exit: the runtime closes (its pools, memory, threads)
            sc.warden.done()
        tctx.__exit__(None, None, None)


ONLY = """
pipeline:
  order: [{stages}]
  disabled: [budget, strip, tagging, memory, clearing, compression, compaction, recall, breakpoints]
  stage_budget_ms: {budget}
memory: {{enabled: false}}  # (the stage is off: no Chroma and model loading in the background)
"""


def only(*stages, budget=250):
    return "extends: claude-code\n" + ONLY.format(stages=", ".join(stages), budget=budget)


APPEND_STAGE = """
    from contextwarden import hookimpl
    from contextwarden.models.anthropic import TextBlock
    name = "appender"

    @hookimpl
    def cw_request(ctx):
        last = ctx.request.messages[-1]
        blocks = [TextBlock(type="text", text=last.content)] if isinstance(last.content, str) else list(last.content)
        ctx.request.messages[-1] = last.model_copy(update={"content": blocks + [TextBlock(type="text", text="[appended]")]})
"""

RAISING_STAGE = """
    from contextwarden import hookimpl
    name = "boom"

    @hookimpl
    def cw_request(ctx):
        raise RuntimeError("stage exploded")
"""

GATED_STAGE = """
    import threading
    from contextwarden import hookimpl
    name = "slow"
    gate, finished = threading.Event(), threading.Event()

    @hookimpl
    def cw_request(ctx):
        gate.wait(60)  # until the test lets it go: past any budget however loaded the machine
        ctx.request.messages[-1] = ctx.request.messages[-1].model_copy(update={"content": "changed too late"})
        finished.set()
"""


def test_script_declares_options_and_rejects_bad_profiles(harness_factory, tmp_path):
    h = harness_factory("observe-only")
    assert h.runtime.settings.proxy.observe_only is True
    with pytest.raises(exceptions.OptionsError, match="unknown profile"):
        h.tctx.configure(h.script, cw_profile="no-such-profile")
    bad = tmp_path / "bad.yaml"
    bad.write_text("compaction:\n  soft_treshold: 0.5\n")
    with pytest.raises(exceptions.OptionsError, match="compaction.soft_treshold: unknown key"):
        h.tctx.configure(h.script, cw_profile=str(bad))


async def test_observe_only_forwards_the_exact_bytes(harness_factory):
    h = harness_factory("observe-only")
    raw = CC_TURN2.read_bytes() if CC_TURN2.exists() else body()
    f = await h.send(anthropic_flow(raw))
    assert f.request.raw_content == raw
    fwd = h.events("forward")
    assert fwd and fwd[-1].data["changed"] is False and fwd[-1].data["reason"] == "observe"
    req = h.events("request")[-1]
    assert req.data["api"] == "anthropic" and req.data["messages"] >= 3
    # the session comes from the body's metadata.user_id (no session header in this request)
    assert req.session == "97f59f64-3c77-4f62-a3a8-0a58e1ef290e" or not CC_TURN2.exists()
    # credentials never reach an event
    assert b"sk-ant-test-SECRET" not in b"".join(e.to_json() for e in h.events())


async def test_other_paths_pass_untouched_and_unparsed(harness_factory):
    h = harness_factory("claude-code")
    for path, host in [("/v1/messages/count_tokens", "api.anthropic.com"), ("/v1/models", "api.anthropic.com"),
                       ("/v1/messages", "example.com")]:
        f = await h.send(anthropic_flow(b"{not json", path=path, host=host))
        assert "contextwarden" not in f.metadata
        assert f.request.raw_content == b"{not json"
    assert not h.events("request") and not h.events("error")


async def test_a_stage_rewrites_and_the_result_is_sent(harness_factory):
    h = harness_factory(plugins={"appender": APPEND_STAGE}, profile_yaml=only("appender"))
    f = await h.send(anthropic_flow(body()))
    sent = orjson.loads(f.request.content)
    assert sent["messages"][-1]["content"] == [{"type": "text", "text": "hello"}, {"type": "text", "text": "[appended]"}]
    assert int(f.request.headers["content-length"]) == len(f.request.raw_content)
    fwd = h.events("forward")[-1].data
    assert fwd["changed"] is True and [s["stage"] for s in fwd["stages"]] == ["appender"]


async def test_rewrite_keeps_the_clients_content_encoding(harness_factory):
    h = harness_factory(plugins={"appender": APPEND_STAGE}, profile_yaml=only("appender"))
    f = anthropic_flow(b"", headers=[("content-encoding", "gzip")])
    f.request.raw_content = gzip.compress(body())
    await h.send(f)
    assert f.request.headers["content-encoding"] == "gzip"
    assert orjson.loads(gzip.decompress(f.request.raw_content))["messages"][-1]["content"][-1]["text"] == "[appended]"


async def test_raising_stage_forwards_the_original(harness_factory):
    h = harness_factory(plugins={"boom": RAISING_STAGE, "appender": APPEND_STAGE}, profile_yaml=only("appender", "boom"))
    raw = body()
    f = await h.send(anthropic_flow(raw))
    assert f.request.raw_content == raw  # appender ran first, but the original goes out
    err = [e for e in h.events("error") if e.data.get("stage") == "boom"]
    assert err and "stage exploded" in err[-1].data["message"]
    assert h.events("forward")[-1].data["changed"] is False


async def test_stage_past_its_budget_is_abandoned(harness_factory):
    h = harness_factory(plugins={"slow": GATED_STAGE}, profile_yaml=only("slow", budget=50))
    mod = h.runtime.pm.get_plugin("slow")
    raw = body()
    try:
        f = await h.send(anthropic_flow(raw))
        assert f.request.raw_content == raw
        st = [e for e in h.events("stage") if e.data["stage"] == "slow"][-1]
        # the request went on while the stage was still running (an ordering, not a bound in ms)
        assert st.data["status"] == "timeout" and not mod.finished.is_set()
    finally:
        mod.gate.set()
    assert await asyncio.to_thread(mod.finished.wait, 30)
    # the abandoned thread finishing later changes nothing already sent
    assert f.request.raw_content == raw


@pytest.mark.parametrize("raw,ctype,why", [
    (b"{not json", "application/json", "malformed JSON"),
    (b"\xff\xfe\x00garbage", "application/json", "malformed JSON"),
    (b"", "application/json", "empty body"),
    (b'{"messages": []}', "text/plain", "content-type"),
    (b'[1, 2]', "application/json", "not an object"),
    (b'{"messages": "nope"}', "application/json", "schema"),
])
async def test_bad_input_is_forwarded_unchanged_with_an_event(harness_factory, raw, ctype, why):
    h = harness_factory(plugins={"appender": APPEND_STAGE}, profile_yaml=only("appender"))
    f = anthropic_flow(raw)
    f.request.headers["content-type"] = ctype
    await h.send(f)
    assert f.request.raw_content == raw
    errs = [e for e in h.events("error") if e.data["where"] == "parse"]
    assert errs and why in errs[-1].data["message"]


async def test_unknown_roles_and_blocks_survive_a_rewrite(harness_factory):
    h = harness_factory(plugins={"appender": APPEND_STAGE}, profile_yaml=only("appender"))
    msgs = [{"role": "user", "content": [{"type": "hologram", "payload": {"x": 1}, "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": "ok"},
            {"role": "narrator", "content": "a role from the future"},
            {"role": "user", "content": "go on", "future_field": [1, 2, 3]}]
    f = await h.send(anthropic_flow(body(msgs, brand_new_option={"a": True})))
    sent = orjson.loads(f.request.content)
    assert sent["brand_new_option"] == {"a": True}
    assert sent["messages"][0]["content"][0] == {"type": "hologram", "payload": {"x": 1}, "cache_control": {"type": "ephemeral"}}
    assert sent["messages"][2] == {"role": "narrator", "content": "a role from the future"}
    assert sent["messages"][3]["future_field"] == [1, 2, 3]


async def test_consumed_headers_are_removed_and_used(harness_factory):
    h = harness_factory("observe-only")
    f = await h.send(anthropic_flow(body(), headers=[("X-Contextwarden-Session", "my-session")]))
    assert "x-contextwarden-session" not in f.request.headers
    assert h.events("request")[-1].session == "my-session"


async def test_bypassed_session_is_not_rewritten(harness_factory):
    h = harness_factory(plugins={"appender": APPEND_STAGE}, profile_yaml=only("appender"))
    h.runtime.set_bypass("s-1")
    raw = body()
    f = await h.send(anthropic_flow(raw, headers=[("X-Contextwarden-Session", "s-1")]))
    assert f.request.raw_content == raw
    assert h.events("forward")[-1].data["reason"] == "session bypassed"


THREAD_STAGE = """
    import threading
    from contextwarden import hookimpl
    name = "where"
    seen = []

    @hookimpl
    def cw_request(ctx):
        seen.append(threading.get_ident())
"""


async def test_a_request_is_read_and_its_stages_run_in_one_trip_to_a_stage_thread(harness_factory):
    """Parsing, counting, the request event and the stages run on one stage thread, one after another:
    no trip to the core pool first (each trip waits for a thread and the interpreter lock, twice). The
    flow's context is known once the trip is back; a bypassed session's request is read there too, and
    no stage runs."""
    h = harness_factory(plugins={"where": THREAD_STAGE}, profile_yaml=only("where"))
    mod = h.runtime.pm.get_plugin("where")
    rt = h.runtime
    emitted: list[tuple[str, int]] = []
    unsub = rt.bus.subscribe(lambda ev: emitted.append((ev.type, threading.get_ident())))

    def no_core(*a, **k):
        raise AssertionError("a trip to the core pool")

    rt.core_pool.submit = no_core
    try:
        f = anthropic_flow(body(), headers=[("X-Contextwarden-Session", "s-1")])
        await h.interceptor.request(f)
        st = f.metadata["contextwarden"]
        assert st.ctx_future.done() and st.ctx_future.result().session == "s-1"
        [req_thread] = [t for ty, t in emitted if ty == "request"]
        assert mod.seen == [req_thread] and req_thread != threading.get_ident()
        fwd = h.events("forward")[-1].data
        assert fwd["timings"]["to_stages"] >= fwd["timings"]["count_in"] and "to_loop" in fwd["timings"]

        rt.set_bypass("s-2")
        f = anthropic_flow(body(), headers=[("X-Contextwarden-Session", "s-2")])
        await h.interceptor.request(f)
        assert f.metadata["contextwarden"].ctx_future.result().session == "s-2"
        assert h.events("request")[-1].data["mode"] == "bypass" and len(mod.seen) == 1
        assert h.events("forward")[-1].data["reason"] == "session bypassed"

        f = anthropic_flow(b"{not json")
        await h.interceptor.request(f)
        assert f.metadata["contextwarden"].ctx_future.result() is None
        assert "malformed JSON" in [e for e in h.events("error") if e.data["where"] == "parse"][-1].data["message"]
    finally:
        del rt.core_pool.submit
        unsub()


async def test_events_reach_the_jsonl_log(harness_factory, tmp_path):
    h = harness_factory("observe-only")
    await h.send(anthropic_flow(body()))
    h.runtime.log.close()
    events = read_log(tmp_path / "home" / "logs" / "events.jsonl")
    assert {"startup", "request", "forward"} <= {e.type for e in events}


async def test_a_request_is_routed_once_whichever_addons_look_at_it(harness_factory, monkeypatch):
    """issue 41: the interceptor (HTTP and count_tokens) and the WebSocket addon each asked ``apis.route`` of every
    flow; the route is decided once and carried by the flow's request."""
    from contextwarden.addons import routing

    calls = []
    route = routing.route

    def counted(*a, **kw):
        calls.append(a[3])
        return route(*a, **kw)

    monkeypatch.setattr(routing, "route", counted)
    h = harness_factory("observe-only")
    by_name = {type(a).__name__: a for a in h.script.addons}
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
    flow = anthropic_flow(body.encode())
    by_name["WebSocketResponses"].request(flow)
    await h.send(flow)
    assert calls == ["/v1/messages?beta=true"]
    assert h.events("request")[-1].data["path"] == "/v1/messages?beta=true"
