"""The engine process (``python -m contextwarden.engine FD [IN OUT]``): a mitmproxy master without a proxy server,
running the same addons as an in-process proxy (``contextwarden.addons.chain``) on mirrors of mitmdump's
flows: the stages, the token counting and the answers' reading hold this process's interpreter lock,
never the one of the process relaying bytes. mitmdump's link (``addons/enginelink.py``) sends, over the
socket pair ``FD`` (the frames' large bytes through the shared memory ``IN`` and ``OUT``, ``frames.Ring``):

    start       the options (profile, home, plugins)       → ready {proxy settings} | fatal {message}
    running     mitmdump listens                            → reply (the addons' ``running``: discovery files written)
    request     a flow's state, once its request is read   → reply {request changes, response, watch}
    observed    a flow mitmdump forwarded at once (nothing could change it: ``passive``), at its end:
                its state, the request as it came, the answer read whole
    headers     the response's head (no body)               the observer's tap is set on the mirror
    chunk       a piece of the body, as relayed              fed to that tap
    end         the response's end (or its error)            the observer reports the turn
    ws          a client message of a Responses WebSocket  → reply {content, dropped, inject}
    ws_server   a server message                             read on the side
    ws_end      the socket closed
    shutdown                                              → bye (after the addons' ``done``)

and sends ``settings`` ({proxy, passive}, as in ``ready``) when they change at run time: which flows the
link sends, and whether it waits for their reply; ``idle`` after the runtime's idle forget
(``collector.background``): each side gives its ring's pages back (``frames.Ring.release``); then maybe
``recycle`` (``recycle.py``), which the link answers (``recycle`` True: nothing in flight, the link holds
what comes until this process, exec'd, says ``ready`` again; False: it carries on as it is).

Mirrors live from ``request`` to ``end`` (or ``ws_end``); one the link never ends is dropped after
``STALE_S``. The engine ends when told to, or when the socket closes (mitmdump is gone): either way
the addons' ``done`` runs (state persisted, the memory process stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from typing import Any

from mitmproxy import exceptions, hooks, http, options, websocket
from mitmproxy.flow import Error
from mitmproxy.master import Master
from mitmproxy.proxy.layers.http import HttpErrorHook, HttpRequestHook, HttpResponseHeadersHook, HttpResponseHook
from mitmproxy.proxy.layers.websocket import WebsocketEndHook, WebsocketMessageHook

from contextwarden.addons.chain import engine_addons
from contextwarden.addons.eventserver import EventServer
from contextwarden.addons.routing import FORWARDED, INCOMING, ROUTE
from contextwarden.addons.warden import Warden

from ..core import collector, frames
from ..core.events import Event, continue_after
from ..memory.client import ATTACH_ENV, RemoteMemoryService
from ..memory.service import get_service
from . import recycle

log = logging.getLogger(__name__)

STALE_S = 3600.0  # a mirror whose flow never ended (a lost frame, a bug): dropped after this
_CROSSING = frozenset({"proxyauth", ROUTE})  # the metadata a mirror keeps
_UNWATCHED = frozenset({FORWARDED, INCOMING})  # metadata that does not make a flow one the addons watch


class Engine:
    def __init__(self, sock: socket.socket, rings: tuple[frames.Ring | None, frames.Ring | None] = (None, None),
                 carried: recycle.Carried | None = None) -> None:
        self.sock = sock
        self.from_link, self.to_link = rings  # the large bytes of frames each way (frames.Ring)
        self.master: Master | None = None
        self.warden = Warden()
        self.mirrors: dict[str, tuple[http.HTTPFlow, float]] = {}
        self.writer: asyncio.StreamWriter | None = None
        self.tasks: set[asyncio.Task] = set()
        self._settings_sent = None  # the settings the link classifies by, as last sent
        self.carried = carried  # what this engine before its exec left (recycle.py)
        self.options: dict[str, Any] = {}
        self.events: EventServer | None = None
        self.listening = False  # mitmdump listens (``running``)
        self.served = 0  # requests since this start
        self.start_rss = 0.0
        self.started = time.time()
        self.recycling = False  # the link agreed: exec once the read loop ends

    # -- start --------------------------------------------------------------------------------

    def start(self, opts_values: dict[str, Any]) -> str | None:
        """The master and its addons, configured with mitmdump's options; an error message, or None."""
        self.master = Master(options.Options(), with_termlog=True)
        self.options = opts_values
        addons = engine_addons(self.warden)
        for a in addons:
            if type(a).__name__ == "WebSocketResponses":
                a.inject = _collect_inject  # the injection happens in mitmdump's process: sent back
            if isinstance(a, EventServer):
                self.events = a
                a.carried = self.carried.server if self.carried is not None else None
        self.master.addons.add(*addons)
        try:
            self.master.options.update(**opts_values)
        except (exceptions.OptionsError, KeyError, ValueError) as e:
            return str(e)
        if self.warden.runtime is None:
            return "contextwarden: the runtime did not start (see the log above)"
        return None

    async def run(self, opts_values: dict[str, Any]) -> int:
        c = self.carried
        if c is not None:
            continue_after(max((e["seq"] for e in c.events), default=0))  # the TUI tells events by their seq
            if c.memory is not None:
                os.environ[ATTACH_ENV] = " ".join(map(str, c.memory))  # (the memory client takes it)
        error = self.start(opts_values)
        if error is not None:
            frames.send_blocking(self.sock, "fatal", None, error)
            return 1
        rt = self.warden.runtime
        assert rt is not None  # (start() said so)
        if c is not None:
            if c.overrides:
                rt.apply_overrides(c.overrides)
            rt.bus.recent = deque([*map(Event.from_dict, c.events), *rt.bus.recent], maxlen=rt.bus.recent.maxlen)
            rt.bus.emit("engine", {"pid": os.getpid(), "execs": c.execs, "started": c.started,
                                   "rss_mb_before": c.rss_mb, "rss_mb": collector.heap().get("rss_mb"),
                                   "restart_ms": round((time.time() - c.at) * 1000, 1)})
        # the RSS to recycle from, less the tokenizers': one loaded later (an OpenAI model under an Anthropic
        # profile) is no growth to start again for
        self.start_rss = collector.heap().get("rss_mb", 0.0) - rt.tokens.loaded_mb
        self._settings_sent = rt.settings
        frames.send_blocking(self.sock, "ready", None, {**self._link_settings(), "pid": os.getpid(),
                                                      "release_flows": rt.settings.pipeline.release_flows,
                                                      "timeout_s": rt.settings.pipeline.engine_timeout_s})
        reader, self.writer = await frames.open_stream(self.sock)
        if c is not None and c.listening:
            self.listening = True
            await self._hook(hooks.RunningHook())  # the discovery files (the TUI's: the same port and token)
        loop = asyncio.get_running_loop()
        rt.bus.subscribe(lambda ev: self._forgot(loop, ev))
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        reading = asyncio.ensure_future(self.read(reader))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([reading, stopping], return_when=asyncio.FIRST_COMPLETED)
        if self.recycling and not stop.is_set():
            await self.recycle()
        await self.close()
        reading.cancel()
        stopping.cancel()
        return 0

    async def close(self) -> None:
        """The addons' ``done``: the runtime closes (state persisted, memory stopped)."""
        if self.master is None:
            return
        master, self.master = self.master, None
        if self.tasks:  # requests and ends in flight: 2 s for all of them, not each (SIGTERM stays quick)
            await asyncio.wait(list(self.tasks), timeout=2.0)
        await master.addons.trigger_event(hooks.DoneHook())
        self._send("bye")

    async def recycle(self) -> None:
        """This process execs itself as a new engine (``recycle.py``): its runtime closed, its memory process kept."""
        rt, c = self.warden.runtime, self.carried
        assert rt is not None and self.writer is not None and self.from_link is not None and self.to_link is not None
        if self.tasks:  # answers still being read
            await asyncio.wait(list(self.tasks))
        svc = get_service(rt)
        memory = svc.detach() if isinstance(svc, RemoteMemoryService) else None
        rss = collector.heap().get("rss_mb", 0.0)
        rt.close()  # (its state and event log written; no ``shutdown`` event: the runtime goes on)
        server = self.events.service if self.events is not None else None
        if server is not None:
            server.stop()  # its last events counted
        await self.writer.drain()
        recycle.exec_engine(self.sock, (self.from_link, self.to_link), recycle.Carried(
            options=self.options, listening=self.listening, overrides=rt.overrides,
            events=[e.to_dict() for e in list(rt.bus.recent)], server=server.carry() if server is not None else None,
            memory=memory, ring_head=self.to_link.head, execs=c.execs + 1 if c is not None else 1,
            started=c.started if c is not None else self.started, rss_mb=rss, at=time.time()))

    # -- frames -------------------------------------------------------------------------------

    async def read(self, reader: asyncio.StreamReader) -> None:
        sweep = time.monotonic() + 60
        while True:
            frame = await frames.read(reader, self.from_link)
            if frame is None:
                return  # mitmdump is gone
            op, key, payload = frame
            if op == "shutdown":
                return
            if op == "recycle":  # the link's answer (recycle.py)
                if payload:
                    self.recycling = True
                    return
                continue
            try:
                if op == "running":  # mitmdump listens: now the addons may tell the world (tui.json)
                    self.listening = True
                    await self._hook(hooks.RunningHook())
                    self._send("reply", key, {})
                elif op == "observed":  # forwarded at once, ended: its request read, then its answer
                    await self.request(None, payload.pop("flow"))
                    self._spawn(self.end(key, payload))
                elif op == "request":
                    self._spawn(self.request(key, payload))
                elif op == "headers":
                    await self.headers(key, payload)
                elif op == "chunk":
                    self.chunk(key, payload)
                elif op == "end":
                    self._spawn(self.end(key, payload))
                elif op == "ws":
                    self._spawn(self.ws_message(key, payload))
                elif op == "ws_server":
                    await self.ws_server(key, payload)
                elif op == "ws_end":
                    await self.ws_end(key, payload)
                elif op == "note" and self.warden.runtime is not None:  # the link forwarded a request unchanged
                    fid = payload.pop("flow_id", None)
                    self.warden.runtime.bus.emit("error", payload, flow_id=fid)
            except Exception:
                log.exception(f"contextwarden engine: {op}")
            self._settings_changed()
            now = time.monotonic()
            if now > sweep:
                sweep = now + 60
                for fid in [f for f, (_, t) in self.mirrors.items() if now - t > STALE_S]:
                    self.mirrors.pop(fid, None)

    def _forgot(self, loop: asyncio.AbstractEventLoop, ev: Event) -> None:
        """The runtime's idle forget (an event from the collector's thread): the rings' pages go too."""
        if ev.type == "gc" and ev.data.get("reason") == "forget":
            loop.call_soon_threadsafe(self._release_ring, ev.data.get("rss_mb", 0.0))

    def _release_ring(self, rss_mb: float) -> None:
        if self.to_link is not None:
            self.to_link.release()
        self._send("idle")  # mitmdump's side releases the other one
        rt = self.warden.runtime
        p = rt.settings.pipeline if rt is not None else None
        if p is not None and p.recycle and self.served and self.to_link is not None \
                and rss_mb >= self.start_rss + rt.tokens.loaded_mb + p.recycle_mb:
            self._send("recycle")  # start again small, if the link agrees (recycle.py)

    def _send(self, op: str, key: Any = None, payload: Any = None) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.writelines(frames.encode(op, key, payload, self.to_link))

    async def _hook(self, hook: hooks.Hook) -> None:
        if self.master is not None:  # (None once closed)
            await self.master.addons.trigger_event(hook)

    def _spawn(self, coro) -> None:
        t = asyncio.ensure_future(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    def _link_settings(self) -> dict[str, Any]:
        rt = self.warden.runtime
        return {"proxy": rt.settings.proxy, "passive": rt.passive()}

    def _settings_changed(self) -> None:
        rt = self.warden.runtime
        if rt is not None and rt.settings is not self._settings_sent:  # changed at run time (the TUI)
            self._settings_sent = rt.settings
            self._send("settings", None, self._link_settings())

    async def request(self, seq: int | None, state: dict) -> None:
        self.served += 1
        reply: dict[str, Any] = {"watch": False}
        try:
            flow = frames.mirror(state)
            # what the addons put here says whether the flow is watched; the user the proxy credential
            # vouched for stays (the tenant of a request without a provider credential: origin_of), and
            # the route the link took (not taken again)
            vouched = {k: v for k, v in flow.metadata.items() if k in _CROSSING}
            flow.metadata = dict(vouched) if seq is not None else {**vouched, FORWARDED: True}
            raw, fields = flow.request.raw_content, flow.request.headers.fields
            await self._hook(HttpRequestHook(flow))
            req = flow.request
            # only what changed crosses back (an unchanged ~600 KB body does not)
            changed: dict[str, Any] = {}
            if req.headers.fields != fields:
                changed["headers"] = req.headers.fields
            if req.raw_content is not raw:
                changed["raw_content"] = req.raw_content
            if changed:
                reply["request"] = changed
            if flow.response is not None:
                reply["response"] = flow.response.get_state()
            if flow.metadata.keys() - vouched.keys() - _UNWATCHED:
                reply["watch"] = True
                self.mirrors[flow.id] = (flow, time.monotonic())
        except Exception as e:  # the link forwards the request as it came
            log.exception("contextwarden engine: request")
            reply["error"] = f"{type(e).__name__}: {e}"
        if seq is not None:
            self._send("reply", seq, reply)
        self._settings_changed()

    async def headers(self, flow_id: str, state: dict) -> None:
        m = self.mirrors.get(flow_id)
        if m is None:
            return
        flow = m[0]
        flow.response = frames.message(http.Response, state)
        await self._hook(HttpResponseHeadersHook(flow))

    def chunk(self, flow_id: str, data: bytes) -> None:
        m = self.mirrors.get(flow_id)
        if m is None:
            return
        stream = m[0].response.stream if m[0].response is not None else None
        if callable(stream):
            stream(data)

    async def end(self, flow_id: str, payload: dict) -> None:
        m = self.mirrors.pop(flow_id, None)
        if m is None:
            return
        flow = m[0]
        resp = payload.get("response")
        if resp is not None:
            if flow.response is None or payload.get("replaced"):
                flow.response = frames.message(http.Response, resp)
            else:  # the head came before: the end's timestamps (the body was streamed to the tap)
                flow.response.timestamp_end = resp.get("timestamp_end")
        if payload.get("error") is not None:
            flow.error = Error(payload["error"])
            await self._hook(HttpErrorHook(flow))
        else:
            await self._hook(HttpResponseHook(flow))

    def _ws_flow(self, flow_id: str, message: Any) -> tuple[http.HTTPFlow, websocket.WebSocketMessage] | None:
        m = self.mirrors.get(flow_id)
        if m is None:
            return None
        flow = m[0]
        if flow.websocket is None:
            flow.websocket = websocket.WebSocketData()
        msg = websocket.WebSocketMessage.from_state(message)
        flow.websocket.messages = [msg]  # the addon reads the newest; the mirror keeps no history
        self.mirrors[flow_id] = (flow, time.monotonic())
        return flow, msg

    async def ws_message(self, key: tuple[int, str], message: Any) -> None:
        seq, flow_id = key
        reply: dict[str, Any] = {}
        try:
            got = self._ws_flow(flow_id, message)
            if got is not None:
                flow, msg = got
                content = msg.content
                flow.metadata.pop(INJECT, None)
                await self._hook(WebsocketMessageHook(flow))
                if msg.content is not content:
                    reply["content"] = msg.content
                reply["dropped"] = msg.dropped
                reply["inject"] = flow.metadata.pop(INJECT, [])
        except Exception as e:
            log.exception("contextwarden engine: websocket message")
            reply = {"error": f"{type(e).__name__}: {e}"}
        self._send("reply", seq, reply)

    async def ws_server(self, flow_id: str, message: Any) -> None:
        got = self._ws_flow(flow_id, message)
        if got is not None:
            await self._hook(WebsocketMessageHook(got[0]))

    async def ws_end(self, flow_id: str, close_code: int | None) -> None:
        m = self.mirrors.pop(flow_id, None)
        if m is None:
            return
        flow = m[0]
        if flow.websocket is None:
            flow.websocket = websocket.WebSocketData()
        flow.websocket.close_code = close_code
        await self._hook(WebsocketEndHook(flow))


INJECT = "contextwarden_engine_inject"


def _collect_inject(flow: http.HTTPFlow, data: bytes) -> None:
    """The WebSocket addon's injection, in the engine: kept on the mirror, sent back with the reply."""
    flow.metadata.setdefault(INJECT, []).append(data)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Ctrl-C in a terminal reaches the whole process group: mitmdump's process decides when the
    # engine stops (it asks, or its end closes the socket), so that it can still finish its flows
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the engine is the proxy: memory and compression run in processes of their own (``auto``), as in mitmdump
    os.environ.setdefault("CONTEXTWARDEN_PROXY__AUTO_PROCESS", "separate")
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # its log lines among mitmdump's, as they happen
    logging.getLogger().setLevel(logging.INFO)  # as mitmdump's: the termlog handler filters by its verbosity
    sock = socket.socket(fileno=int(argv[0]))
    sock.setblocking(True)  # (after an exec: the event loop's non-blocking mode stays on the socket)
    carried = recycle.load(int(argv[3])) if len(argv) > 3 else None
    first = frames.read_blocking(sock, None) if carried is None else ("start", None, carried.options)
    if first is None or first[0] != "start":
        return 2
    # (mitmdump's to here, here to mitmdump; their fds stay open, for an exec)
    rings = [frames.Ring(int(fd)) for fd in argv[1:3]]
    if carried is not None:
        rings[1].head = carried.ring_head
    engine = Engine(sock, (rings[0], rings[1]) if len(rings) == 2 else (None, None), carried)
    try:
        return asyncio.run(engine.run(first[2]))
    except Exception as e:
        log.exception("contextwarden engine")
        with contextlib.suppress(OSError):
            frames.send_blocking(sock, "fatal", None, f"{type(e).__name__}: {e}")
        return 1
