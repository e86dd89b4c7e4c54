"""The TUI against real sources: a real Runtime's event server through the live client (commands,
reconnects, a refused token), a real recorded log offline, and the real proxy process carrying real
anthropic SDK traffic to the stand-in upstream."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx2
import orjson
import pytest

from contextwarden.addons.eventserver import EventService
from contextwarden.core.liveprotocol import INFO_FILE
from contextwarden.core.runtime import Runtime
from contextwarden.tui.app import ContextWardenApp
from contextwarden.tui.client import ConnectionInfo, LiveClient, LogSource
from contextwarden.tui.screens.inspector import InspectorScreen
from contextwarden.tui.screens.settings import SettingsScreen
from contextwarden.tui.widgets.synctable import SyncTable
from tests.support.proxy import ProxyProcess
from tests.support.sdk import anthropic
from tests.support.upstream import StandIn
from tests.support.wait import await_until
from tests.tui.test_app import screen_text

API_KEY = "sk-ant-api03-TUI-E2E-SECRET-KEY"


async def until(pilot, app, predicate, timeout: float = 20.0, what: str = "condition"):
    def flushed():
        app.flush()
        return predicate()
    assert await await_until(flushed, timeout, pause=pilot.pause), \
        f"timed out waiting for {what}; connection {app.connection_state}: {app.connection_detail}"


@pytest.fixture
def runtime(cw_home):
    rt = Runtime.from_profile("default", cw_home)
    rt.bus.emit("startup", {"profile": "default", "mode": "active", "stages": [n for n, _ in rt.stages()]})
    yield rt
    rt.close()


def emit_request(rt, flow: str, session: str, tags: list[str]) -> None:
    rt.bus.emit("request", {"api": "anthropic", "model": "claude-x", "tokens_in": 4000, "mode": "active",
                            "headers": [["x-api-key", "[REDACTED:header]"]]}, flow_id=flow, session=session)
    rt.bus.emit("tags", {"tags": tags}, flow_id=flow, session=session)
    rt.bus.emit("stage", {"stage": "tagging", "ms": 1.25, "status": "ok"}, flow_id=flow, session=session)
    rt.bus.emit("forward", {"changed": False, "tokens_in": 4000, "tokens_out": 4000, "pipeline_ms": 1.3}, flow_id=flow, session=session)
    rt.bus.emit("response", {"status": 200, "upstream_ms": 42.0}, flow_id=flow, session=session)


async def test_live_client_commands_reach_the_runtime(runtime, cw_home, tmp_path):
    svc = EventService(runtime).start()
    try:
        emit_request(runtime, "f1", "sess-live", ["alpha", "beta"])
        app = ContextWardenApp(LiveClient(cw_home), tick=0.05, export_dir=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, app, lambda: "f1" in app.store.requests, what="the snapshot")
            emit_request(runtime, "f2", "sess-live", ["gamma"])
            await until(pilot, app, lambda: app.store.requests.get("f2") and app.store.requests["f2"].status == 200,
                        what="a live request")
            assert app.store.requests["f2"].tags == ["gamma"] and app.store.requests["f2"].stages == {"tagging": 1.25}
            # bypass from the Sessions panel
            await pilot.press("3")
            await pilot.pause()
            await pilot.press("b")
            await until(pilot, app, lambda: "sess-live" in runtime.bypass, what="the bypass")
            await until(pilot, app, lambda: "sess-live" in app.store.bypass, what="the bypass event")
            # settings screen: a new soft threshold and a stage switched off, not persisted
            await pilot.press("c")
            await pilot.pause()
            assert isinstance(app.screen, SettingsScreen)
            app.screen.query_one("#set-compaction--soft-threshold").value = "0.55"
            app.screen.query_one("#stage-tagging").value = False
            await pilot.press("ctrl+s")
            await until(pilot, app, lambda: runtime.settings.compaction.soft_threshold == 0.55, what="the new settings")
            assert "tagging" not in [n for n, _ in runtime.stages()]
            assert runtime.state.get("runtime", "overrides") is None
            await until(pilot, app, lambda: app.store.thresholds[0] == 0.55, what="settings in the TUI")
            # export with the proxy's own snapshot
            await pilot.press("e")
            await until(pilot, app, lambda: list(tmp_path.glob("contextwarden-session-*.json")), what="the export")
            exported = orjson.loads(next(tmp_path.glob("contextwarden-session-*.json")).read_bytes())
            assert exported["session"] == "sess-live" and exported["bypassed"] is True
            assert {e["flow_id"] for e in exported["events"] if e["flow_id"]} == {"f1", "f2"}
    finally:
        svc.stop()


async def test_live_client_reconnects_when_the_proxy_restarts(runtime, cw_home):
    svc = EventService(runtime).start()
    client = LiveClient(cw_home, min_delay=0.05, max_delay=0.2)
    app = ContextWardenApp(client, tick=0.05)
    # what the app notified, kept: a notification leaves the screen after its timeout (4 s), which a
    # loaded machine can pass before the check below runs
    said: list[str] = []
    notify = app.notify
    app.notify = lambda message, *a, **k: (said.append(str(message)), notify(message, *a, **k))[1]
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, app, lambda: app.connection_state == "connected", what="the first connection")
            first_port = svc.port
            await asyncio.to_thread(svc.stop)  # not on the TUI's loop: a real proxy stops elsewhere
            await until(pilot, app, lambda: app.connection_state in ("waiting", "disconnected"), what="the disconnect")
            assert "lost" in " ".join(said)
            # the restarted proxy has a new port and token; the client reads tui.json again
            emit_request(runtime, "after-restart", "s2", ["x"])
            svc = EventService(runtime).start()
            assert ConnectionInfo.read(cw_home).port == svc.port
            await until(pilot, app, lambda: app.connection_state == "connected" and "after-restart" in app.store.requests,
                        what="the reconnect")
            assert client.connections == 2 and (svc.port != first_port or client.attempts >= 2)
            assert "● connected" in screen_text(app)
    finally:
        svc.stop()


async def test_wrong_token_is_refused_and_shown(runtime, cw_home):
    svc = EventService(runtime).start()
    try:
        d = orjson.loads((cw_home / INFO_FILE).read_bytes())
        d["token"] = "not-the-token"
        (cw_home / INFO_FILE).write_bytes(orjson.dumps(d))
        app = ContextWardenApp(LiveClient(cw_home, min_delay=0.05, max_delay=0.1), tick=0.05)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, app, lambda: app.connection_state == "refused", what="the refusal")
            assert "token not accepted" in app.connection_detail and not app.store.requests
            assert "✖ refused" in screen_text(app)
    finally:
        svc.stop()


async def test_no_proxy_running_is_waiting(tmp_path):
    app = ContextWardenApp(LiveClient(tmp_path / "nothing", min_delay=0.05), tick=0.05)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, app, lambda: app.connection_state == "waiting", what="waiting")
        assert "no running proxy found" in screen_text(app)


async def test_offline_log_opens_read_only(runtime, cw_home, tmp_path):
    emit_request(runtime, "f-log", "sess-log", ["offline", "replay"])
    runtime.bus.emit("compaction", {"messages": 30, "tokens_before": 90_000, "tokens_after": 40_000}, flow_id="f-log",
                     session="sess-log")
    runtime.log.close()  # flushes events.jsonl
    runtime.log = None
    log = cw_home / "logs" / "events.jsonl"
    assert log.exists()
    app = ContextWardenApp(LogSource(log), tick=0.05, export_dir=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, app, lambda: app.connection_state == "offline" and "f-log" in app.store.requests, what="the log")
        assert app.store.totals.compactions == 1 and app.store.totals.requests == 1
        assert "◆ offline" in screen_text(app)
        await pilot.press("c")  # nothing to change offline
        await pilot.pause()
        assert not isinstance(app.screen, SettingsScreen)
        await pilot.press("2")
        await pilot.pause()
        await pilot.press("b")
        await pilot.pause()
        assert "sess-log" not in runtime.bypass
        await pilot.press("e")  # export works from the events the TUI holds
        await until(pilot, app, lambda: list(tmp_path.glob("contextwarden-session-sess-log-*.json")), what="the export")
    exported = orjson.loads(next(tmp_path.glob("contextwarden-session-sess-log-*.json")).read_bytes())
    assert [e["type"] for e in exported["events"]][:2] == ["request", "tags"] and exported["requests"] == []


@pytest.mark.e2e
async def test_real_proxy_sdk_traffic_appears_with_tags_and_stage_timings(tmp_path):
    """mitmdump + addons/contextwarden.py (default profile, reverse mode to the stand-in), the real
    anthropic SDK, and the TUI connected the way `contextwarden tui` connects."""
    with StandIn() as standin:
        proxy = await asyncio.to_thread(ProxyProcess(tmp_path / "px", profile="default", reverse=standin.url).start)
        try:
            info = json.loads((proxy.home / INFO_FILE).read_text())
            # the event server runs in mitmdump's engine process (its child)
            engine = Path(f"/proc/{info['pid']}")
            assert b"contextwarden.engine" in (engine / "cmdline").read_bytes()
            assert f"PPid:\t{proxy.proc.pid}\n" in (engine / "status").read_text()
            assert (proxy.home / INFO_FILE).stat().st_mode & 0o077 == 0

            def ask(prompt: str, session: str):
                client = anthropic.Anthropic(api_key=API_KEY, base_url=proxy.url, max_retries=0,
                                             http_client=httpx2.Client(trust_env=False, timeout=60),
                                             default_headers={"x-contextwarden-session": session})
                with client.messages.stream(model="claude-sonnet-4-6", max_tokens=200,
                                            messages=[{"role": "user", "content": prompt}]) as s:
                    return s.get_final_message()

            app = ContextWardenApp(LiveClient(proxy.home), tick=0.1, export_dir=tmp_path)
            async with app.run_test(size=(100, 30)) as pilot:
                await until(pilot, app, lambda: app.connection_state == "connected", what="the connection")
                reply = await asyncio.to_thread(ask, "How does kubernetes horizontal autoscaling react to memory pressure?", "tui-e2e")
                assert reply.content[0].text

                def done_row():
                    rows = [r for r in app.store.requests.values() if r.session == "tui-e2e"]
                    return rows[0] if rows and rows[0].status == 200 and rows[0].tags and "memory" in rows[0].stages else None

                await until(pilot, app, lambda: done_row() is not None, timeout=30, what="the request row")
                row = done_row()
                assert "kubernetes" in row.tags and row.upstream_ms is not None and row.tokens_in
                assert set(row.stages) >= {"budget", "strip", "tagging", "clearing", "compaction", "memory"}
                await pilot.press("2")
                await pilot.pause(0.2)
                table = app.screen.query_one("#requests-table", SyncTable)
                assert table.keys[0] == row.flow_id
                assert "kubernetes" in str(table.get_cell(row.flow_id, "tags"))
                assert str(table.get_cell(row.flow_id, "status")) == "200"
                text = screen_text(app)
                assert "tui-e2e" in text and "kubernetes" in text
                assert f"tagging {row.stages['tagging']:.1f}" in text or f"tagging {row.stages['tagging']:,.0f}" in text
                assert "compaction" in text and "upstream" in text
                # the inspector gets the body from the proxy, without the key
                await pilot.press("enter")
                await until(pilot, app, lambda: isinstance(app.screen, InspectorScreen) and app.screen.entry is not None,
                            what="the bodies")
                await pilot.pause(0.2)
                text = screen_text(app)
                assert "forwarded unchanged" in text and "[text] How does kubernetes horizontal" in text
                await pilot.press("s")
                await pilot.pause(0.2)
                saved = next(tmp_path.glob("contextwarden-request-*.json")).read_text()
                assert "kubernetes" in saved and API_KEY not in saved and "TUI-E2E-SECRET" not in saved
                await pilot.press("escape")
                # bypass the session from the TUI: the proxy's next request of it is observe-only
                await pilot.press("b")
                await until(pilot, app, lambda: "tui-e2e" in app.store.bypass, what="the bypass")
                mark = proxy.mark()
                await asyncio.to_thread(ask, "And what about CPU pressure?", "tui-e2e")
                evs = proxy.wait_events(lambda e: e["type"] == "request" and e["session"] == "tui-e2e", since=mark)
                assert evs and evs[0]["data"]["mode"] == "bypass"
                assert API_KEY not in screen_text(app)
        finally:
            await asyncio.to_thread(proxy.stop)
        assert not (proxy.home / INFO_FILE).exists()  # removed on shutdown
