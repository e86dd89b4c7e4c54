"""mitmdump's side of the engine (``contextwarden.engine``; ``cw_engine``, on by default): hands each
LLM API flow's hooks to the engine process and applies what it sends back.

Here stays what only mitmdump's process can do: relaying the bytes (a copy of each response chunk goes
to the engine), putting a rewritten request or an answer in place, dropping or injecting a WebSocket
message. Only flows of a known route cross. A request nothing can change (the engine is ``passive``,
or a bypass header) is forwarded at once and crosses whole at its end, in one ``observed`` frame.

Fail open: a request the engine does not answer within ``pipeline.engine_timeout_s`` (or while it is
down) goes as the client sent it. An engine that dies is started again; requests wait for it up to
``RESTART_WAIT_S``, then go unchanged.

An engine that would start itself again in place (``contextwarden.engine.recycle``) asks first: the link
agrees only with nothing in flight, then holds every frame and request until the new engine's ``ready``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader
from mitmproxy.coretypes.serializable import Serializable

from contextwarden.core import flowrelease, frames
from contextwarden.settings.proxy import ProxySection
from contextwarden.wire.apis import HTTP

from .routing import bypass_asked, routed

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0  # the engine's start: imports, the runtime, the tokenizers (first run: their download)
RESTART_WAIT_S = 30.0
STOP_WAIT_S = 8.0  # SIGTERM to exit must stay under 10 s
BUFFER_LIMIT = 64 << 20  # response copies waiting for the engine: past this, copies stop (bytes still relay)


class _Ready(TypedDict):
    """The engine's ``ready`` frame (``contextwarden.engine.server``)."""

    proxy: ProxySection
    passive: bool
    pid: int
    release_flows: bool
    timeout_s: float  # pipeline.engine_timeout_s


class _Engine:
    """One engine process and the socket to it, started with ``options`` (mitmdump's, by name)."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket, ready: _Ready,
                 options: dict[str, Any], rings: tuple[frames.Ring | None, frames.Ring | None] = (None, None)) -> None:
        self.proc = proc
        self.options = options
        self.sock = sock
        self.to_engine, self.from_engine = rings  # the large bytes of frames each way (frames.Ring)
        self._take(ready)
        self.quiet: Callable[[], bool] = lambda: True  # no flow of the link's in flight (an engine may exec)
        self.hold: asyncio.Future[None] | None = None  # while the engine execs: frames wait in ``held``
        self.held: list[tuple[str, Any, Any]] = []
        self.writer: asyncio.StreamWriter | None = None
        self.reading: asyncio.Task[None] | None = None
        self.waiting: dict[int, asyncio.Future[dict[str, Any] | None]] = {}
        self.seq = 0
        self.closed = False

    @classmethod
    def start(cls, options: dict[str, Any]) -> _Engine:
        """Start the process and wait for its runtime (blocking: the proxy does not take requests
        before contextwarden can read them, as when the runtime was built in mitmdump's process)."""
        mine, theirs = socket.socketpair()
        frames.tune(mine)
        frames.tune(theirs)
        to_engine, from_engine = frames.Ring.create(), frames.Ring.create()
        fds = [theirs.fileno()] + ([to_engine.fd, from_engine.fd] if to_engine and from_engine else [])
        # A session of its own: a scheduling group of its own (Linux's autogroups). It stops with
        # mitmdump: asked over its socket, or when it closes (it ignores SIGINT). Two malloc arenas:
        # freed bodies sit in few heaps, which malloc_trim gives back when idle (collector.background)
        try:
            proc = subprocess.Popen([sys.executable, "-m", "contextwarden.engine", *map(str, fds)],
                                    pass_fds=fds, stdin=subprocess.DEVNULL, start_new_session=True,
                                    env={"MALLOC_ARENA_MAX": "2", **os.environ})
        finally:
            theirs.close()
            for fd in fds[1:]:
                os.close(fd)  # (the maps stay)
        try:
            frames.send_blocking(mine, "start", None, options)
            frame = _interruptible(frames.read_blocking, mine, START_TIMEOUT_S)
        except OSError as e:
            frame = ("fatal", None, f"the engine did not answer: {e}")
        except KeyboardInterrupt:  # Ctrl-C while it starts: the engine goes too, and mitmdump stops
            _end(proc, mine)
            raise exceptions.OptionsError("stopped (Ctrl-C) while the engine started") from None  # type: ignore[no-untyped-call]
        if frame is None or frame[0] != "ready":
            why = frame[2] if frame is not None else f"the engine exited ({proc.poll()})"
            _end(proc, mine)
            raise exceptions.OptionsError(str(why))  # type: ignore[no-untyped-call]  # unannotated in mitmproxy
        return cls(proc, mine, frame[2], options, (to_engine, from_engine) if len(fds) > 1 else (None, None))

    def _take(self, ready: _Ready) -> None:
        self.proxy = ready["proxy"]  # its settings' proxy section: what it handles
        self.passive = ready["passive"]  # no request's bytes can change (observe-only, no stage): none waits
        self.pid = ready["pid"]
        self.release_flows = ready["release_flows"]
        self.timeout_s = ready["timeout_s"]

    async def connect(self) -> None:
        reader, self.writer = await frames.open_stream(self.sock)
        self.reading = asyncio.ensure_future(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            frame = await frames.read(reader, self.from_engine)
            if frame is None:
                break
            op, key, payload = frame
            if op == "reply":
                fut = self.waiting.pop(key, None)
                if fut is not None and not fut.done():
                    fut.set_result(payload)
            elif op == "settings":  # changed at run time: classify by the new ones
                self.proxy, self.passive = payload["proxy"], payload["passive"]
            elif op == "idle" and self.to_engine is not None:  # the engine forgot its caches: the ring's pages too
                self.to_engine.release()
            elif op == "recycle":  # it would exec itself: yes only with nothing in flight, then hold
                agreed = self.hold is None and not self.waiting and self.quiet()
                self._write("recycle", None, agreed)
                if agreed:
                    self.hold = asyncio.get_running_loop().create_future()
            elif op == "ready":  # the engine after its exec
                self._take(payload)
                log.info(f"contextwarden: the engine process {self.pid} started itself again (its memory given back)")
                self._resume()
            elif op == "fatal":  # it did not start after its exec
                log.error(f"contextwarden: the engine did not start again: {payload}")
            elif op == "bye":
                break
        self.closed = True
        self._resume()
        if self.writer is not None:
            self.writer.close()  # off the event loop's selector: a new engine's socket may get this fd number
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_result(None)
        self.waiting.clear()

    def _resume(self) -> None:
        """The held frames go (in order), the held calls too."""
        hold, self.hold = self.hold, None
        held, self.held = self.held, []
        for frame in held:
            self._write(*frame)
        if hold is not None and not hold.done():
            hold.set_result(None)

    def _write(self, op: str, key: Any = None, payload: Any = None) -> bool:
        w = self.writer
        if self.closed or w is None or w.is_closing():
            return False
        w.writelines(frames.encode(op, key, payload, self.to_engine))
        return True

    def send(self, op: str, key: Any = None, payload: Any = None) -> bool:
        if self.hold is not None and not self.closed:
            self.held.append((op, key, payload))
            return True
        return self._write(op, key, payload)

    async def call(self, op: str, payload: Any, key: Any = None) -> dict[str, Any] | None:
        """Send and wait for the reply (None: no reply in time, or the engine is gone)."""
        if self.hold is not None:  # the engine execs: sent once it is ready again (its timeout from then)
            try:
                await asyncio.wait_for(asyncio.shield(self.hold), RESTART_WAIT_S)
            except TimeoutError:
                return None
        self.seq += 1
        seq = self.seq
        fut = asyncio.get_running_loop().create_future()
        self.waiting[seq] = fut
        if not self.send(op, seq if key is None else (seq, key), payload):
            self.waiting.pop(seq, None)
            return None
        try:
            return await asyncio.wait_for(fut, self.timeout_s)
        except TimeoutError:
            self.waiting.pop(seq, None)
            return None

    def backlog(self) -> int:
        t = self.writer.transport if self.writer is not None else None
        return t.get_write_buffer_size() if t is not None else 0

    async def stop(self) -> None:
        w = self.writer
        if self.send("shutdown") and w is not None:
            try:
                await w.drain()
            except Exception:
                pass
        deadline = time.monotonic() + STOP_WAIT_S
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        _end(self.proc, self.sock)
        if self.reading is not None:
            self.reading.cancel()

    def stop_blocking(self) -> None:
        try:
            frames.send_blocking(self.sock, "shutdown")
        except OSError:
            pass
        try:
            self.proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            pass
        _end(self.proc, self.sock)


def _interruptible[T](wait: Callable[..., T], *args: Any) -> T:
    """``wait(*args)``, which Ctrl-C (SIGINT) stops with KeyboardInterrupt: mitmproxy's own handler runs on its
    event loop, which a wait in ``configure`` holds (a slow start, a first run fetching the tokenizers, could not
    be stopped)."""
    if threading.current_thread() is not threading.main_thread():
        return wait(*args)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return wait(*args)
    finally:
        if previous is not None:  # (None: not installed from Python, nothing to put back)
            signal.signal(signal.SIGINT, previous)


def _end(proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
    """Kill the engine if it is still running, and close the link; never raises: beside two CPU-bound loops a
    killed engine took over 5 s to be reaped, and the exception stopped mitmdump's shutdown there (the other
    addons' ``done`` never ran). A process still exiting is left to the OS."""
    if proc.poll() is None:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    try:
        sock.close()
    except OSError:
        pass


def _state(m: Serializable) -> dict[str, Any]:
    """A request's or response's state (through the base class: ``http.Message``'s own is unannotated)."""
    state: dict[str, Any] = m.get_state()
    return state


def _through(inner: Callable[[bytes], Iterable[bytes] | bytes] | bool, chunk: bytes) -> bytes:
    """A response chunk through the stream function set before this addon's (its pieces joined)."""
    if not callable(inner):
        return chunk
    out = inner(chunk)
    return out if isinstance(out, bytes) else b"".join(out)


@dataclass
class _Observed:
    """A forwarded flow until its end: its request as it came, its answer's pieces as relayed."""

    request: dict[str, Any]
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0


class EngineLink:
    def __init__(self) -> None:
        self.engine: _Engine | None = None
        self._linked: asyncio.Future[_Engine | None] | None = None  # resolves to the connected engine (None: none)
        self._stopping = False
        self.watched: set[str] = set()  # flows the engine mirrors, until their end
        self.streamed: set[str] = set()
        self.observed: dict[str, _Observed] = {}  # forwarded flows, sent whole at their end
        self.listening = False  # mitmdump listens: an engine (a restarted one too) hears ``running``

    # -- options and lifecycle ---------------------------------------------------------------

    def load(self, loader: Loader) -> None:
        loader.add_option("cw_engine", bool, True,
                          "Run contextwarden's request path in a process of its own (the engine), beside "
                          "mitmdump's: its work never holds up the bytes mitmdump relays. Off: in mitmdump's process.")

    def configure(self, updated: set[str]) -> None:
        o = ctx.options
        if not o.cw_engine:
            self._stop_now()
            return
        if not updated & {"cw_profile", "cw_home", "cw_plugins", "cw_engine", "termlog_verbosity"}:
            return
        if o.cw_plugins and not Path(o.cw_plugins).expanduser().is_dir():
            raise exceptions.OptionsError(f"cw_plugins: not a folder: {o.cw_plugins}")  # type: ignore[no-untyped-call]
        wanted = {"cw_profile": o.cw_profile, "cw_home": o.cw_home, "cw_plugins": o.cw_plugins}
        if "termlog_verbosity" in o:
            wanted["termlog_verbosity"] = o.termlog_verbosity
        if self.engine is not None and wanted == self.engine.options and self.engine.proc.poll() is None:
            return
        self._stop_now()
        self.engine = _Engine.start(wanted)  # an OptionsError stops mitmdump with the engine's reason
        self._linked = None
        try:
            if self.engine.release_flows:
                flowrelease.install()  # mitmdump's finished flows freed without a full collection
        except Exception as e:
            log.warning(f"contextwarden: flow release not installed: {e}")
        log.info(f"contextwarden: engine process {self.engine.pid} runs the request path")

    def _stop_now(self) -> None:
        if self.engine is not None:
            self.engine.stop_blocking()
            self.engine = None
            self._linked = None

    async def running(self) -> None:
        """The proxy listens: the engine's servers may now write their discovery files (``tui.json``)."""
        eng = await self._link()
        if eng is not None:
            await eng.call("running", None)
        self.listening = True

    async def done(self) -> None:
        self._stopping = True
        if self.engine is not None:
            await self.engine.stop()
            self.engine = None

    async def _link(self) -> _Engine | None:
        """The connected engine; one that died is started again (requests wait up to RESTART_WAIT_S)."""
        if self.engine is None or self._stopping:
            return None
        linked = self._linked.result() if self._linked is not None and self._linked.done() else None
        if linked is not None and not linked.closed:
            return linked  # (the common case: no wait to set up)
        if self._linked is None or linked is not None:
            self._linked = asyncio.ensure_future(self._connect())
        try:
            return await asyncio.wait_for(asyncio.shield(self._linked), RESTART_WAIT_S)
        except TimeoutError:
            return None

    async def _connect(self) -> _Engine | None:
        eng = self.engine
        if eng is None:
            return None
        if eng.closed or eng.proc.poll() is not None:  # it died: a new one, started off the event loop
            log.error(f"contextwarden: the engine process stopped ({eng.proc.poll()}); starting it again")
            if eng.writer is not None:
                eng.writer.close()
            _end(eng.proc, eng.sock)
            try:
                eng = await asyncio.get_running_loop().run_in_executor(None, _Engine.start, eng.options)
            except Exception as e:
                log.error(f"contextwarden: the engine did not start again: {e}")
                self.engine = None
                return None
            self.engine = eng
        if eng.writer is None:
            eng.quiet = lambda: not self.watched
            await eng.connect()
            if self.listening:  # a restarted engine: its servers publish as the first one's did
                eng.send("running", 0)
        return eng

    # -- HTTP --------------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        eng = self.engine
        got = routed(flow, eng.proxy) if eng is not None and flow.response is None else None
        if got is None:
            return
        eng = await self._link()
        if eng is not None and got[0] == HTTP and (eng.passive or self._bypass_asked(eng, flow)):
            self._forward(eng, flow, got[1].value)
            return
        reply = await eng.call("request", frames.flow_state(flow)) if eng is not None else None
        if reply is None or "error" in reply:
            self._failed_open(eng, flow, reply["error"] if reply is not None else "no answer from the engine")
            return
        r = reply.get("request")
        if r is not None and "headers" in r:
            flow.request.headers = http.Headers(r["headers"])
        if r is not None and "raw_content" in r:
            flow.request.raw_content = r["raw_content"]
        if reply.get("response") is not None:
            flow.response = http.Response.from_state(reply["response"])  # type: ignore[no-untyped-call]
        if reply.get("watch"):
            self._watch(flow, got[1].value)

    def _forward(self, eng: _Engine, flow: http.HTTPFlow, api: str) -> None:
        """A request nothing can change goes at once: the engine reads it, with its answer, once the
        flow ends (``_end``), for its events, the TUI and memory."""
        self.observed[flow.id] = _Observed(_state(flow.request))  # (as it came: the proxy's headers in)
        for name in eng.proxy.consumed_headers:  # addressed to the proxy: they never go upstream
            flow.request.headers.pop(name, None)
        self._watch(flow, api)

    @staticmethod
    def _bypass_asked(eng: _Engine, flow: http.HTTPFlow) -> bool:
        name = "x-contextwarden-bypass"
        return name in eng.proxy.consumed_headers and bypass_asked(flow.request.headers.get(name))

    def _watch(self, flow: http.HTTPFlow, api: str) -> None:
        self.watched.add(flow.id)
        flow.metadata["contextwarden_engine"] = api  # its API (overhead, upstreamerror)

    def _failed_open(self, eng: _Engine | None, flow: http.HTTPFlow, why: str) -> None:
        log.warning(f"contextwarden: {flow.request.path} forwarded unchanged: {why}")
        if eng is not None:
            eng.send("note", None, {"where": "engine link", "message": why, "action": "forwarded unchanged",
                                    "flow_id": flow.id})

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        eng = self.engine
        if flow.id not in self.watched or eng is None or flow.response is None or flow.websocket is not None \
                or flow.response.status_code == 101:
            return
        inner = flow.response.stream
        fid = flow.id
        observed = self.observed.get(fid)
        if observed is not None:  # kept for the flow's end (a reference each: no copy, no frame)
            def keep(chunk: bytes) -> bytes:
                chunk = _through(inner, chunk)
                if chunk and observed.size < BUFFER_LIMIT:
                    observed.chunks.append(chunk)
                    observed.size += len(chunk)
                return chunk

            flow.response.stream = keep
            return
        if not eng.send("headers", flow.id, _state(flow.response)):
            return
        self.streamed.add(fid)
        lossy: list[bool] = []

        def stream(chunk: bytes) -> bytes:
            chunk = _through(inner, chunk)
            if chunk and not lossy:
                if eng.backlog() > BUFFER_LIMIT:  # the engine is far behind: stop copying, keep relaying
                    lossy.append(True)
                    eng.send("note", None, {"where": "engine link", "flow_id": fid, "action": "answer not read",
                                            "message": "the engine fell behind reading answers"})
                else:
                    eng.send("chunk", fid, bytes(chunk))
            return chunk

        flow.response.stream = stream

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None and (flow.response is None or flow.response.status_code != 101):
            self._end(flow, None)

    def error(self, flow: http.HTTPFlow) -> None:
        self._end(flow, str(flow.error) if flow.error else "error")

    def _end(self, flow: http.HTTPFlow, error: str | None) -> None:
        if flow.id not in self.watched:
            return
        self.watched.discard(flow.id)
        streamed = flow.id in self.streamed
        self.streamed.discard(flow.id)
        observed = self.observed.pop(flow.id, None)
        if self.engine is None:
            return
        resp = _state(flow.response) if flow.response is not None else None
        if resp is not None and streamed:
            resp["content"] = None  # the engine read it chunk by chunk
        # sent once the answer is on its way to the client (the next turn of the loop): encoding a whole
        # flow is not the client's wait
        later = asyncio.get_running_loop().call_soon
        if observed is None:
            later(self.engine.send, "end", flow.id, {"response": resp, "replaced": not streamed, "error": error})
            return
        state = frames.flow_state(flow)
        state["request"] = observed.request  # (the engine reads the request as it came first)
        state["metadata"] = dict(flow.metadata)  # (as it is now)
        if resp is not None and observed.chunks:  # the body as it was relayed (None: not streamed, kept whole)
            resp["content"] = b"".join(observed.chunks)
        later(self.engine.send, "observed", flow.id, {"flow": state, "response": resp, "replaced": True, "error": error})

    # -- the Responses WebSocket --------------------------------------------------------------

    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        eng = self.engine
        if flow.id not in self.watched or eng is None or flow.websocket is None or not flow.websocket.messages:
            return
        msg = flow.websocket.messages[-1]
        if msg.injected or not msg.is_text:
            return
        if not msg.from_client:
            eng.send("ws_server", flow.id, msg.get_state())
            return
        eng = await self._link()
        reply = await eng.call("ws", msg.get_state(), key=flow.id) if eng is not None else None
        if reply is None or "error" in reply:
            self._failed_open(eng, flow, reply["error"] if reply is not None else "no answer from the engine")
            return
        for data in reply.get("inject") or ():
            ctx.master.commands.call("inject.websocket", flow, True, data, True)
        if reply.get("content") is not None:
            msg.content = reply["content"]
        if reply.get("dropped"):
            msg.drop()  # type: ignore[no-untyped-call]  # unannotated in mitmproxy

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        if flow.id not in self.watched:
            return
        self.watched.discard(flow.id)
        if self.engine is not None:
            ws = flow.websocket
            self.engine.send("ws_end", flow.id, ws.close_code if ws is not None else None)
