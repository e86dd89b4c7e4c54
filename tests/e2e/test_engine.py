"""The engine process (contextwarden.engine) through a real mitmdump: it runs the request path beside
mitmdump's process, comes back when it dies, and stops with mitmdump; ``cw_engine=false`` keeps the
chain in mitmdump's process."""

from __future__ import annotations

import os
import signal
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.support.proxy import ProxyProcess, start_together, stop_together
from tests.support.upstream import StandIn
from tests.support.wait import wait_until

ENV = {"CONTEXTWARDEN_MEMORY__ENABLED": "false", "CONTEXTWARDEN_COMPRESSION__ENABLED": "false"}  # the engine alone
# each test's own proxy: name -> (profile, its settings beside ENV, its mitmproxy options)
SETUPS = {
    "respawn": ("claude-code", {}, {}),
    "no-engine": ("claude-code", {}, {"cw_engine": "false"}),
    "hung": ("claude-code", {"CONTEXTWARDEN_PIPELINE__ENGINE_TIMEOUT_S": "2"}, {}),
    "observed": ("observe-only", {"CONTEXTWARDEN_PIPELINE__ENGINE_TIMEOUT_S": "600"}, {}),
}
BODY = {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True,
        "messages": [{"role": "user", "content": "hello engine"}]}
HEADERS = {"x-api-key": "sk-ant-engine", "anthropic-version": "2023-06-01"}


def engines(pid: int) -> list[int]:
    out = []
    for t in Path(f"/proc/{pid}/task").glob("*/children"):
        for c in t.read_text().split():
            try:
                if b"contextwarden.engine" in Path(f"/proc/{c}/cmdline").read_bytes():
                    out.append(int(c))
            except OSError:
                pass
    return out


def ask(proxy: ProxyProcess) -> httpx.Response:
    r = httpx.post(proxy.url + "/v1/messages", json=BODY, headers=HEADERS, timeout=120, trust_env=False)
    assert r.status_code == 200 and b"message_stop" in r.content, r.text[:500]
    return r


def ask_and_read(proxy: ProxyProcess) -> None:
    """A request, its stages run and its answer read (a ``turn`` event) by the engine."""
    mark = proxy.mark()
    ask(proxy)
    assert proxy.wait_events(lambda e: e["type"] == "turn", since=mark)
    assert proxy.events("forward", since=mark)[-1]["data"]["stages"]


@pytest.fixture(scope="module")
def rigs(tmp_path_factory):
    """Every test's own proxy and stand-in upstream, the proxies started together (their warm-ups overlap)."""
    with ExitStack() as stack:
        upstreams = {name: stack.enter_context(StandIn(sse_delay=0.005)) for name in SETUPS}
        procs = {name: ProxyProcess(tmp_path_factory.mktemp(name), name=name, profile=profile,
                                    reverse=upstreams[name].url, env={**ENV, **env}, options=options)
                 for name, (profile, env, options) in SETUPS.items()}
        start_together(procs.values())
        try:
            yield {name: (procs[name], upstreams[name]) for name in SETUPS}
        finally:
            stop_together(procs.values())


def test_the_engine_reads_requests_and_answers_comes_back_and_stops_with_mitmdump(rigs):
    proxy, _ = rigs["respawn"]
    try:
        [engine] = engines(proxy.proc.pid)
        # its own session (a scheduling group of its own under Linux's autogroups, not a share of mitmdump's)
        assert os.getsid(engine) == engine != os.getsid(proxy.proc.pid)
        ask_and_read(proxy)  # in the engine: mitmdump's process has no runtime
        os.kill(engine, signal.SIGKILL)

        def respawned() -> bool:
            ask(proxy)  # forwarded (unchanged while no engine answers) until a new one runs
            return not proxy.alive or engines(proxy.proc.pid) not in ([], [engine])
        assert wait_until(respawned, 60, interval=0.2), "no new engine"
        [again] = engines(proxy.proc.pid)
        assert again != engine and proxy.alive
        ask_and_read(proxy)  # the new engine's work
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.wait_stopped(30) != -signal.SIGKILL  # it exited on SIGTERM, not killed past 30 s
    finally:
        proxy.stop()
    assert not Path(f"/proc/{again}").exists() or b"zombie" in Path(f"/proc/{again}/status").read_bytes().lower()
    assert proxy.events("shutdown")  # the engine closed its runtime, not killed


def test_without_the_engine_the_chain_runs_in_mitmdump(rigs):
    proxy, _ = rigs["no-engine"]
    assert engines(proxy.proc.pid) == []
    ask_and_read(proxy)


def test_a_hung_engine_lets_requests_go_unchanged_and_says_so(rigs):
    proxy, upstream = rigs["hung"]
    [engine] = engines(proxy.proc.pid)
    ask_and_read(proxy)
    os.kill(engine, signal.SIGSTOP)  # alive, answering nothing
    try:
        ask(proxy)  # the client's own request went upstream after the link's timeout
        assert upstream.requests("/v1/messages")[-1].json()["messages"] == BODY["messages"]
    finally:
        os.kill(engine, signal.SIGCONT)
    assert proxy.wait_events(lambda e: e["type"] == "error" and e["data"].get("where") == "engine link"
                             and e["data"].get("message") == "no answer from the engine")  # (timed out)
    assert engines(proxy.proc.pid) == [engine]  # the same engine carries on
    ask_and_read(proxy)


def test_an_observed_request_goes_upstream_without_waiting_for_the_engine_which_still_reads_it(rigs):
    """observe-only: nothing the engine says can change the bytes, so mitmdump forwards at once and the
    engine reads its copy after (a stalled engine, far from its link timeout, delays nothing)."""
    proxy, upstream = rigs["observed"]
    [engine] = engines(proxy.proc.pid)
    mark = proxy.mark()
    os.kill(engine, signal.SIGSTOP)  # alive, reading nothing
    try:
        r = httpx.post(proxy.url + "/v1/messages", json=BODY, timeout=60, trust_env=False,
                       headers={**HEADERS, "x-contextwarden-session": "stalled-engine"})
        assert r.status_code == 200 and b"message_stop" in r.content, r.text[:500]
        sent = upstream.requests("/v1/messages")[-1]
        assert sent.json() == BODY and sent.header("x-api-key") == HEADERS["x-api-key"]
        assert sent.header("x-contextwarden-session") is None  # addressed to the proxy: consumed
        assert proxy.events("forward", since=mark, wait=0) == []  # read by no one yet
    finally:
        os.kill(engine, signal.SIGCONT)
    [turn] = proxy.wait_events(lambda e: e["type"] == "turn", since=mark, timeout=60)
    [forward] = proxy.events("forward", since=mark)
    assert turn["session"] == forward["session"] == "stalled-engine"
    assert forward["data"]["changed"] is False and forward["data"]["reason"] == "observe"
    assert not proxy.events("error", since=mark, wait=0)  # not failed open: the engine read it
