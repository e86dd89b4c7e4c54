"""Serves the live event stream to ``contextwarden tui`` over a WebSocket on 127.0.0.1.

Only a client presenting the token of ``cw_home/tui.json`` (mode 0600) connects; browsers (any
``Origin`` header) are refused. A client gets a snapshot (recent events, settings, bypassed sessions,
running totals), then live events in batches (~50 ms), and may send commands (settings, bypass, a
request's bodies, a session's export). The server has its own thread and event loop: the bus
subscriber only appends to a bounded deque, and a client that reads too slowly has whole batches
dropped (and is told how many events it missed), never pushing back on the proxy.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from http import HTTPStatus
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.server import serve

from contextwarden.core.events import Event
from contextwarden.core.liveprotocol import INFO_FILE, PROTOCOL, TOKEN_HEADER, Totals
from contextwarden.core.runtime import Runtime
from contextwarden.sessionctl.commands import run as session_command
from contextwarden.util.home import publish, unpublish
from contextwarden.util.scrub import scrub

from .perruntime import PerRuntime

log = logging.getLogger(__name__)

class _Client:
    """One connected TUI: an outbox drained by its own sender task."""

    def __init__(self, ws: Any, max_batches: int) -> None:
        self.ws = ws
        self.outbox: deque[tuple[bytes, bool]] = deque()  # (message, is a batch of events)
        self.batches_queued = 0
        self.max_batches = max_batches
        self.wake = asyncio.Event()
        self.dropped = 0  # events in batches dropped since the last one that went out

    def push(self, msg: bytes, *, batch: bool = False, events: int = 0, totals: dict[str, Any] | None = None) -> bool:
        if batch:
            if self.batches_queued >= self.max_batches:
                self.dropped += events
                return False
            if self.dropped:
                # the counters as of just before this batch: they include what the client missed
                self.outbox.append((orjson.dumps({"kind": "dropped", "events": self.dropped, "totals": totals}), False))
                self.dropped = 0
            self.batches_queued += 1
        self.outbox.append((msg, batch))
        self.wake.set()
        return True


class EventService:
    """The WebSocket server for one runtime, on its own thread. ``start()`` then ``stop()``."""

    def __init__(self, runtime: Runtime, host: str = "127.0.0.1", port: int = 0, batch_ms: float = 50,
                 client_batches: int = 64, pending_max: int = 20_000, carried: dict[str, Any] | None = None) -> None:
        self.runtime = runtime
        self.host = host
        c = carried or {}  # ``carry()`` of the service before an engine's exec: the TUI finds the same one
        self.requested_port = c.get("port", port)
        self.port: int | None = None
        self.token = c.get("token") or secrets.token_urlsafe(32)
        self.batch_s = batch_ms / 1000
        self.client_batches = client_batches
        self.pending: deque[Event] = deque()
        self.pending_max = pending_max
        self.overflow = 0  # events the server thread could not keep up with
        self.totals = Totals.from_dict(c.get("totals"))
        self.carried = bool(c)
        self.started = c.get("started") or time.time()
        self.clients: set[_Client] = set()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None  # an event came while the server thread slept
        self._asleep = False  # it waits for one (no timer: an idle proxy's thread does not wake)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def _on_event(self, ev: Event) -> None:
        if len(self.pending) >= self.pending_max:
            self.overflow += 1
            return
        self.pending.append(ev)
        if self._asleep and self._loop is not None and self._wake is not None:
            with suppress(RuntimeError):  # (the loop closed: stopping)
                self._loop.call_soon_threadsafe(self._wake.set)

    @property
    def info_path(self) -> Path:
        return Path(self.runtime.home) / INFO_FILE

    def start(self, timeout: float = 10, publish: bool = True) -> EventService:
        """Listen; ``publish``: write the discovery file now (the addon does once the proxy listens)."""
        self._unsubscribe = unsubscribe = self.runtime.bus.subscribe(self._on_event)
        recent = self._recent()
        for ev in recent if not self.carried else ():  # counters start from what the runtime already did
            self.totals.add(ev.to_dict())
        # events published while subscribing are in both; _flush must not count them twice
        self._baseline = {ev.seq for ev in recent}
        if self.totals.started is None:
            self.totals.started = self.started
        self._thread = threading.Thread(target=self._thread_main, name="cw-eventserver", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            unsubscribe()
            raise RuntimeError(f"event server did not start: {self._error!r}")
        if publish:
            self.publish()
        return self

    def stop(self, timeout: float = 5) -> None:
        if self._unsubscribe:
            self._unsubscribe()
            self._unsubscribe = None
        if self._loop is not None and self._stop is not None and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._halt)
            self._thread.join(timeout)
        unpublish(self.info_path, self.token)

    def carry(self) -> dict[str, Any]:
        """What a service after an exec starts from (``carried``)."""
        return {"port": self.port, "token": self.token, "started": self.started, "totals": self.totals.to_dict()}

    def publish(self) -> None:
        publish(self.info_path, {"protocol": PROTOCOL, "host": self.host, "port": self.port, "token": self.token,
                                 "started": self.started})

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # reported to start(); the proxy goes on without a TUI
            self._error = e
            self._ready.set()
            log.exception("contextwarden: event server stopped")

    async def _main(self) -> None:
        self._stop, self._wake = asyncio.Event(), asyncio.Event()
        self._loop = asyncio.get_running_loop()
        async with serve(self._handler, self.host, self.requested_port, process_request=self._authorise,
                         origins=[None], compression=None, max_size=4 * 2**20, ping_interval=20,
                         ping_timeout=60, open_timeout=5, close_timeout=1) as server:
            self.port = next(s.getsockname()[1] for s in server.sockets)
            self._ready.set()
            while not self._stop.is_set():
                self._flush()
                # asleep until an event comes: _on_event (any thread) wakes it when it sees it asleep, and an
                # event appended before that is seen here (each side writes, then reads the other's)
                self._asleep = True
                if not self.pending:
                    await self._wake.wait()
                self._asleep = False
                self._wake.clear()
                await asyncio.sleep(self.batch_s)  # what comes meanwhile goes in the same batch
            self._flush()
            for c in list(self.clients):  # let the final batch (e.g. "shutdown") go out
                if c.outbox:
                    with suppress(Exception):
                        await asyncio.wait_for(self._drain(c), 1)
            server.close()

    def _halt(self) -> None:
        assert self._stop is not None and self._wake is not None
        self._stop.set()
        self._wake.set()

    def _authorise(self, connection: Any, request: Any) -> Any:
        given = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "contextwarden: missing or wrong token\n")
        return None

    def _recent(self) -> list[Event]:
        for _ in range(5):
            try:
                return list(self.runtime.bus.recent)
            except RuntimeError:  # deque mutated by another thread while copying
                continue
        return []

    def settings_dict(self) -> dict[str, Any]:
        rt = self.runtime
        return {"settings": rt.settings.model_dump(mode="json"), "overrides": rt.overrides,
                "bypass": sorted(rt.bypass), "stages": [n for n, _ in rt.stages()],
                "available_stages": sorted({i.plugin_name for i in rt.pm.hook.cw_request.get_hookimpls()}),
                "profile": rt.settings.name}

    def snapshot(self) -> dict[str, Any]:
        recent = self._recent()
        return {"kind": "snapshot", "protocol": PROTOCOL, "pid": os.getpid(), "home": str(self.runtime.home),
                "server_started": self.started, "runtime_started": self.totals.started,
                "totals": self.totals.to_dict(), "events": [e.to_dict() for e in recent],
                "recent_max": self.runtime.bus.recent.maxlen, **self.settings_dict()}

    async def _handler(self, ws: Any) -> None:
        client = _Client(ws, self.client_batches)
        # Flush first: the snapshot's totals then cover every event published so far, and every later
        # batch holds only events they do not. A batch may repeat an event the snapshot lists (published
        # while it was taken): clients de-duplicate rows by seq but count every live event.
        self._flush()
        client.push(orjson.dumps(self.snapshot(), default=str))
        self.clients.add(client)
        sender = asyncio.create_task(self._sender(client))
        try:
            async for raw in ws:
                reply = await self._command(raw)
                client.push(orjson.dumps(reply, default=str))
        except Exception:
            pass
        finally:
            self.clients.discard(client)
            sender.cancel()

    async def _drain(self, client: _Client) -> None:
        while client.outbox:
            msg, batch = client.outbox.popleft()
            if batch:
                client.batches_queued -= 1
            await client.ws.send(msg, text=True)

    async def _sender(self, client: _Client) -> None:
        try:
            while True:
                await client.wake.wait()
                client.wake.clear()
                await self._drain(client)
        except Exception:  # closed connection
            self.clients.discard(client)

    def _flush(self) -> None:
        if not self.pending:
            return
        before = self.totals.to_dict() if any(c.dropped for c in self.clients) else None
        clients = bool(self.clients)
        batch: list[orjson.Fragment] = []
        types: set[str] = set()
        while self.pending:
            try:
                ev = self.pending.popleft()
            except IndexError:
                break
            counted = ev.seq in self._baseline  # counted at start
            if counted:
                self._baseline.discard(ev.seq)
            if clients:
                # the JSON the log wrote (Event.to_json, worked out once), not serialised again
                batch.append(orjson.Fragment(ev.to_json()))
                types.add(ev.type)
                if not counted:
                    self.totals.add(ev.to_dict())
            elif not counted:  # nobody to send to: only the counters (no copy, no scrubbing)
                self.totals.add({"type": ev.type, "ts": ev.ts, "data": ev.data, "flow_id": ev.flow_id})
        if not clients or not batch:
            return
        msg: dict[str, Any] = {"kind": "events", "events": batch}
        if self.overflow:
            msg["overflow"] = self.overflow
        if types & {"settings", "bypass", "startup"}:
            msg.update(self.settings_dict())
        shared = orjson.dumps(msg, default=str)
        for c in list(self.clients):
            c.push(shared, batch=True, events=len(batch), totals=before)

    async def _command(self, raw: Any) -> dict[str, Any]:
        try:
            req = orjson.loads(raw)
            if not isinstance(req, dict):
                raise ValueError("a command is a JSON object")
        except (orjson.JSONDecodeError, ValueError) as e:
            return {"kind": "reply", "id": None, "ok": False, "error": f"bad command: {e}"}
        rid = req.get("id")
        try:
            result = await self.run_command(req)
            return {"kind": "reply", "id": rid, "ok": True, "result": result}
        except Exception as e:
            return {"kind": "reply", "id": rid, "ok": False, "error": f"{type(e).__name__}: {e}" if not isinstance(e, (ValueError, KeyError)) else str(e)}

    async def run_command(self, req: dict[str, Any]) -> Any:
        rt = self.runtime
        cmd, session = req.get("cmd"), req.get("session", "")
        if cmd in ("bypass", "export") and (not isinstance(session, str) or not session):
            raise ValueError(f"{cmd}: 'session' is required")
        if cmd == "set":
            overrides = req.get("overrides")
            if not isinstance(overrides, dict):
                raise ValueError("set: 'overrides' must be an object, e.g. {\"compaction\": {\"soft_threshold\": 0.6}}")
            persist = bool(req.get("persist", False))
            # reloading settings runs cw_configure hooks: keep it off the server loop too
            await asyncio.to_thread(rt.apply_overrides, overrides, persist)
            return {**self.settings_dict(), "persisted": persist}
        if cmd == "bypass":
            on = bool(req.get("on", True))
            await asyncio.to_thread(rt.set_bypass, session, on)
            return {"session": session, "on": on, "bypass": sorted(rt.bypass)}
        if cmd == "bodies":
            entry = rt.bodies.get(str(req.get("flow_id")))
            if entry is None:
                raise ValueError("bodies: not kept for this request (evicted from memory, or not parsed)")
            # the conversation's own secrets too, not only the headers (the inspector shows and saves it)
            return await asyncio.to_thread(scrub, entry)
        if cmd == "export":
            return await asyncio.to_thread(self.export_session, session)
        if cmd == "settings":
            return self.settings_dict()
        if cmd == "session":  # context versions, rollback, pins, compact-now (sessionctl.commands)
            return await asyncio.to_thread(session_command, rt, req)
        if cmd == "ping":
            return {"pong": time.time()}
        raise ValueError(f"unknown command {cmd!r}")

    def export_session(self, session: str) -> dict[str, Any]:
        """Everything kept about one session: its recent events, request bodies and settings."""
        recent = [e.to_dict() for e in self._recent()]
        flows = {e["flow_id"] for e in recent if e.get("session") == session and e.get("flow_id")}
        events = [e for e in recent if e.get("session") == session or (e.get("flow_id") in flows)]
        # headers and every secret in the bodies
        requests = [scrub(entry) for entry in self.runtime.bodies.for_session(session)]
        return {"kind": "contextwarden.session", "version": 1, "session": session, "exported_at": time.time(),
                "bypassed": session in self.runtime.bypass, "profile": self.runtime.settings.name,
                "settings": self.runtime.settings.model_dump(mode="json"), "events": events, "requests": requests}


class EventServer(PerRuntime):
    """mitmproxy addon: runs an :class:`EventService` for the warden's current runtime (lifecycle:
    :class:`~contextwarden.addons.perruntime.PerRuntime`); none when the profile turns the server off."""

    what = "eventserver"
    without = "no TUI stream"
    carried: dict[str, Any] | None = None  # the next service's ``carried`` (the engine's exec)

    def start(self, rt: Runtime) -> EventService | None:
        if not rt.settings.server.enabled:
            return None
        svc = EventService(rt, port=rt.settings.server.port, carried=self.carried).start(publish=False)
        self.carried = None
        log.info(f"contextwarden: event server on {svc.host}:{svc.port} (token in {svc.info_path})")
        return svc
