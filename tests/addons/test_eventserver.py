"""The event server with a real Runtime and real WebSocket clients: token, snapshot then live events,
batching, commands, slow clients, and the addon's lifecycle under mitmproxy's test harness."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import threading
import time

import orjson
import pytest
from mitmproxy import hooks
from mitmproxy.test import taddons
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from contextwarden.addons.eventserver import EventServer, EventService
from contextwarden.addons.warden import Warden
from contextwarden.core.liveprotocol import INFO_FILE, TOKEN_HEADER, Totals
from contextwarden.core.runtime import Runtime
from tests.support.wait import await_until


@pytest.fixture
def runtime(cw_home, monkeypatch):
    monkeypatch.setenv("CONTEXTWARDEN_MEMORY__ENABLED", "false")  # (no Chroma and model loading: not used here)
    rt = Runtime.from_profile("default", cw_home)
    rt.bus.emit("startup", {"profile": "default", "mode": "active", "stages": []})
    yield rt
    rt.close()


@pytest.fixture
def service(runtime):
    svc = EventService(runtime).start()
    yield svc
    svc.stop()


def info(home) -> dict:
    return orjson.loads((home / INFO_FILE).read_bytes())


def ws(svc: EventService, token: str | None = None, **kw):
    headers = {TOKEN_HEADER: token if token is not None else svc.token}
    return connect(f"ws://127.0.0.1:{svc.port}/", additional_headers=headers, proxy=None, max_size=None, **kw)


async def recv(conn, kind: str, timeout: float = 20.0) -> dict:
    """The next message of ``kind`` (others are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        msg = orjson.loads(await asyncio.wait_for(conn.recv(), max(0.01, deadline - time.monotonic())))
        if msg["kind"] == kind:
            return msg


async def command(conn, **cmd) -> dict:
    cmd.setdefault("id", 7)
    await conn.send(orjson.dumps(cmd).decode())
    while True:
        msg = await recv(conn, "reply")
        if msg["id"] == cmd["id"]:
            return msg


def test_info_file_is_private_and_names_the_server(service, cw_home):
    p = cw_home / INFO_FILE
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    d = info(cw_home)
    assert d["host"] == "127.0.0.1" and d["port"] == service.port and d["pid"] == os.getpid()
    assert d["token"] == service.token and len(d["token"]) >= 32
    assert service._thread.name == "cw-eventserver"


def test_listens_on_loopback_only(service):
    import socket

    with socket.create_connection(("127.0.0.1", service.port), timeout=2) as s:
        assert s.getpeername()[0] == "127.0.0.1"
    addrs = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1", "127.0.1.1"}
    for addr in addrs:  # another address of this machine, if it has one, does not answer
        with pytest.raises(OSError):
            socket.create_connection((addr, service.port), timeout=1).close()


async def test_connection_without_the_right_token_is_refused(service):
    for token in ("", "wrong-" + service.token[6:], service.token[:-1]):
        with pytest.raises(InvalidStatus) as e:
            async with ws(service, token=token):
                pass
        assert e.value.response.status_code == 401
    # a browser page (any Origin) is refused even with the token
    with pytest.raises(InvalidStatus) as e:
        async with ws(service, origin="http://evil.example"):
            pass
    assert e.value.response.status_code == 403
    async with ws(service) as conn:
        assert (await recv(conn, "snapshot"))["protocol"] == 1


async def test_snapshot_then_live_events_in_batches(service, runtime):
    runtime.bus.emit("request", {"tokens_in": 5, "headers": [["x-api-key", "[REDACTED:header]"]]}, flow_id="f-old", session="s1")
    runtime.set_bypass("s-bypassed")
    async with ws(service) as conn:
        snap = await recv(conn, "snapshot")
        types = [e["type"] for e in snap["events"]]
        assert types[:2] == ["startup", "request"] and "bypass" in types
        assert snap["bypass"] == ["s-bypassed"]
        assert snap["settings"]["compaction"]["soft_threshold"] == runtime.settings.compaction.soft_threshold
        assert snap["totals"]["requests"] == 1 and snap["runtime_started"] is not None
        # 200 events over about a second arrive as a few dozen messages, not 200
        for i in range(200):
            runtime.bus.emit("stage", {"stage": "tagging", "ms": 0.1}, flow_id=f"f{i}", session="s1")
            if i % 10 == 9:
                await asyncio.sleep(0.05)  # the pace under test
        got, messages = [], 0
        while len(got) < 200:
            m = await recv(conn, "events")
            messages += 1
            got += [e for e in m["events"] if e["type"] == "stage"]
        assert [e["flow_id"] for e in got] == [f"f{i}" for i in range(200)]
        assert messages <= 40, messages


async def test_an_idle_server_sleeps_and_wakes_for_the_next_event_from_any_thread(service, runtime, monkeypatch):
    """No timer: while no event comes the server thread does not run (an idle proxy's CPU); the first
    event after the idle spell, and every one of many emitted at once from many threads, still arrive."""
    flushes = []
    flush = service._flush
    monkeypatch.setattr(service, "_flush", lambda: (flushes.append(time.monotonic()), flush())[1])
    async with ws(service) as conn:
        await recv(conn, "snapshot")
        await asyncio.sleep(1.5)
        idle = len(flushes)
        await asyncio.sleep(1.5)
        assert len(flushes) - idle <= 1, len(flushes) - idle  # (a 50 ms batch timer: 30)
        t0 = time.monotonic()
        runtime.bus.emit("stage", {"stage": "tagging", "ms": 0.1}, flow_id="after-idle", session="s1")
        m = await recv(conn, "events", timeout=5)
        assert [e["flow_id"] for e in m["events"]] == ["after-idle"] and time.monotonic() - t0 < 2
        # many threads at once, after another idle spell: none left waiting for a later wake-up
        await asyncio.sleep(0.3)
        threads = [threading.Thread(target=lambda k=k: [runtime.bus.emit("stage", {"stage": "tagging"},
                                                                          flow_id=f"t{k}-{i}", session="s1")
                                                         for i in range(50)]) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got: set[str] = set()
        while len(got) < 400:
            got |= {e["flow_id"] for e in (await recv(conn, "events", timeout=5))["events"]}
        assert got == {f"t{k}-{i}" for k in range(8) for i in range(50)}


async def test_headers_with_credentials_never_leave_the_server(service, runtime):
    # the pipeline redacts before emitting; the server checks again
    runtime.bus.emit("request", {"headers": [["x-api-key", "sk-ant-LEAK"], ["Authorization", "Bearer LEAK2"],
                                             ["content-type", "application/json"]]}, flow_id="f1", session="s1")
    runtime.bodies.put("f1", {"flow_id": "f1", "session": "s1", "headers": [("x-api-key", "sk-ant-LEAK"), ("accept", "*/*")],
                              "original": {"messages": [{"role": "user", "content": "hi"}]}, "rewritten": None}, 100)
    async with ws(service) as conn:
        snap = await recv(conn, "snapshot")
        runtime.bus.emit("request", {"headers": [["cookie", "LEAK3"]]}, flow_id="f2", session="s1")
        live = await recv(conn, "events")
        bodies = await command(conn, cmd="bodies", flow_id="f1")
        export = await command(conn, cmd="export", session="s1")
    for payload in (snap, live, bodies, export):
        text = orjson.dumps(payload).decode()
        assert "LEAK" not in text
    assert ["x-api-key", "[REDACTED:header]"] in bodies["result"]["headers"]
    assert ["content-type", "application/json"] in snap["events"][-1]["data"]["headers"]


async def test_set_command_changes_settings_for_new_requests(service, runtime):
    async with ws(service) as conn:
        await recv(conn, "snapshot")
        r = await command(conn, cmd="set", overrides={"compaction": {"soft_threshold": 0.6}}, persist=False)
        assert r["ok"] and r["result"]["settings"]["compaction"]["soft_threshold"] == 0.6
        assert runtime.settings.compaction.soft_threshold == 0.6
        assert runtime.state.get("runtime", "overrides") is None  # not persisted, profile untouched
        # every client learns about it with the "settings" event
        m = await recv(conn, "events")
        assert any(e["type"] == "settings" for e in m["events"]) and m["settings"]["compaction"]["soft_threshold"] == 0.6
        r = await command(conn, cmd="set", overrides={"pipeline": {"disabled": ["memory"]}}, persist=True)
        assert r["ok"] and "memory" not in r["result"]["stages"]
        assert runtime.state.get("runtime", "overrides")["pipeline"]["disabled"] == ["memory"]
        bad = await command(conn, cmd="set", overrides={"compaction": {"no_such_key": 1}})
        assert not bad["ok"] and "no_such_key" in bad["error"]
        assert runtime.settings.compaction.soft_threshold == 0.6
        assert not (await command(conn, cmd="frobnicate"))["ok"]


async def test_bypass_command_puts_a_session_into_observe_only(service, runtime):
    async with ws(service) as conn:
        await recv(conn, "snapshot")
        r = await command(conn, cmd="bypass", session="s-42", on=True)
        assert r["ok"] and r["result"]["bypass"] == ["s-42"]
        assert "s-42" in runtime.bypass
        m = await recv(conn, "events")
        assert m["events"][-1]["type"] == "bypass" and m["bypass"] == ["s-42"]
        r = await command(conn, cmd="bypass", session="s-42", on=False)
        assert "s-42" not in runtime.bypass and r["result"]["bypass"] == []


async def test_export_and_bodies(service, runtime):
    runtime.bus.emit("request", {"tokens_in": 10}, flow_id="fa", session="sa")
    runtime.bus.emit("response", {"status": 200}, flow_id="fa", session=None)  # response without session: matched by flow
    runtime.bus.emit("request", {"tokens_in": 10}, flow_id="fb", session="sb")
    runtime.bodies.put("fa", {"flow_id": "fa", "session": "sa", "headers": [], "original": {"messages": []},
                              "rewritten": {"messages": [{"role": "user", "content": "x"}]}}, 10)
    async with ws(service) as conn:
        await recv(conn, "snapshot")
        ex = (await command(conn, cmd="export", session="sa"))["result"]
        assert ex["session"] == "sa" and {e["flow_id"] for e in ex["events"]} == {"fa"}
        assert [e["type"] for e in ex["events"]] == ["request", "response"]
        assert ex["requests"][0]["rewritten"] == {"messages": [{"role": "user", "content": "x"}]}
        missing = await command(conn, cmd="bodies", flow_id="nope")
        assert not missing["ok"] and "not kept" in missing["error"]


async def _emit_burst(runtime, tag: str) -> None:
    """400 large events, yielding to the loop now and then (the pace of a busy proxy)."""
    big = "x" * 20_000
    for i in range(400):
        runtime.bus.emit("stage", {"pad": big}, flow_id=f"{tag}{i}")
        if i % 20 == 0:
            await asyncio.sleep(0.02)


def _small_buffer_socket(svc: EventService) -> socket.socket:
    """A connected socket whose receive buffer stays at 64 KB: Linux grows a loopback one up to
    tcp_rmem's maximum (32 MB here) when left alone, which would swallow the whole burst."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.connect(("127.0.0.1", svc.port))
    s.setblocking(False)
    return s


async def _drain(conn, n: int) -> None:
    got = 0
    while got < n:
        got += len((await recv(conn, "events"))["events"])


async def test_slow_client_gets_dropped_batches_and_never_slows_the_bus(runtime):
    svc = EventService(runtime, client_batches=2, batch_ms=10).start()
    try:
        # the same burst with a client that reads: it gets everything
        async with ws(svc) as fast:
            await recv(fast, "snapshot")
            await _emit_burst(runtime, "b")
            await _drain(fast, 400)
        # a client that never reads: its socket buffers fill, then its outbox, then batches are dropped
        async with ws(svc, max_queue=1, close_timeout=0.5, sock=_small_buffer_socket(svc)) as slow, ws(svc) as fast:
            await recv(fast, "snapshot")
            # the burst ends with the slow client unread: an emit that waited for it would wait until it
            # reads, below, and never end (how long emits take is bench/, not a test)
            await _emit_burst(runtime, "f")
            await _drain(fast, 400)  # the fast client still gets everything
            slow_client = await await_until(lambda: next((c for c in svc.clients if c.batches_queued or c.dropped),
                                                         None), 5)
            assert slow_client.dropped > 0 and slow_client.batches_queued <= 2
            # once it reads again it is told how many events it missed, with the server's counters
            # (the notice rides on the next batch its outbox has room for: keep events coming while it reads)
            notice = None
            for k in range(60):
                runtime.bus.emit("stage", {}, flow_id=f"after{k}")
                try:
                    notice = await recv(slow, "dropped", timeout=1)
                    break
                except TimeoutError:
                    continue
            assert notice is not None
            assert notice["events"] > 0 and notice["totals"]["events"] >= 400
    finally:
        svc.stop()


def test_totals_count_measured_and_estimated_separately():
    t = Totals()
    t.add({"type": "request", "data": {}})
    # in the order the proxy emits them: the stage's event, then the request's forward
    t.add({"type": "compaction", "flow_id": "f1", "data": {"tokens_before": 1000, "tokens_after": 600}})
    t.add({"type": "forward", "flow_id": "f1", "data": {"tokens_in": 1000, "tokens_out": 600, "changed": True}})
    t.add({"type": "turn", "data": {"tokens_in": 1000, "tokens_sent": 600,
                                    "usage": {"input_tokens": 100, "output_tokens": 10, "cache_read_input_tokens": 400,
                                              "cache_creation_input_tokens": 100}}})
    billed = 100 + 1.25 * 100 + 0.1 * 400
    assert t.billed_units == pytest.approx(billed)
    assert t.est_saved_units == pytest.approx(400 * billed / 600)
    assert (t.requests, t.turns, t.compactions, t.tokens_freed, t.rewritten) == (1, 1, 1, 400, 1)
    assert Totals.from_dict(t.to_dict()).to_dict() == t.to_dict()


async def test_addon_lifecycle_start_restart_stop(tmp_path):
    home = tmp_path / "home"
    warden = Warden()
    server = EventServer(warden)
    with taddons.context(warden, server) as tctx:
        tctx.configure(warden, cw_home=str(home), cw_profile="default")
        assert server.service is not None and server.service.runtime is warden.runtime
        # the file that lets the TUI find it is written once the proxy listens, not before
        assert not (home / INFO_FILE).exists()
        tctx.master.addons.invoke_addon_sync(server, hooks.RunningHook())
        first = info(home)
        async with ws(server.service) as conn:
            snap = await recv(conn, "snapshot")
            # the first event but the memory status, which the memory service's thread may emit before it
            first_event = next(e for e in snap["events"] if e["type"] != "memory_status")
            assert first_event["type"] == "startup" and snap["profile"] == "default"
        # a new profile means a new runtime: the server follows it with a new token
        old_runtime = warden.runtime
        tctx.configure(warden, cw_profile="observe-only")
        assert warden.runtime is not old_runtime and server.service.runtime is warden.runtime
        second = info(home)
        assert second["token"] != first["token"]
        async with ws(server.service) as conn:
            assert (await recv(conn, "snapshot"))["profile"] == "observe-only"
        svc = server.service
        tctx.master.addons.invoke_addon_sync(warden, hooks.DoneHook())
        tctx.master.addons.invoke_addon_sync(server, hooks.DoneHook())
        assert server.service is None and not (home / INFO_FILE).exists()
        assert not svc._thread.is_alive()


async def test_server_disabled_by_profile(tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text("extends: default\nserver:\n  enabled: false\n")
    warden = Warden()
    server = EventServer(warden)
    with taddons.context(warden, server) as tctx:
        tctx.configure(warden, cw_home=str(tmp_path / "home"), cw_profile=str(prof))
        assert warden.runtime is not None and server.service is None
        assert not (tmp_path / "home" / INFO_FILE).exists()
        tctx.master.addons.invoke_addon_sync(warden, hooks.DoneHook())
