"""The Responses API over WebSocket: Codex CLI's default transport.

Each client text message ``{"type": "response.create", <the request's fields>}`` is one request of the
Responses API, with the HTTP request's lifecycle (``Interceptor.run``): a rewritten message replaces the
client's, whose own goes whenever anything fails. Server messages (the SSE stream's events, one JSON
message each) are read on the side into the turn and forwarded unchanged; anything else passes unread.
Requests on one socket are answered in order, so server messages belong to the oldest request not
finished yet. Each request gets its own flow id (``<websocket flow id>.<n>``): its own row in the TUI.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from mitmproxy import ctx as mitmctx
from mitmproxy import http
from mitmproxy.proxy.layers import websocket as ws_layer
from mitmproxy.websocket import WebSocketMessage
from wsproto.events import Message

from contextwarden.request.context import BlockedResponse, Incoming
from contextwarden.wire.apis import WEBSOCKET
from contextwarden.wire.streams.tap import ResponseTap

from .interceptor import Interceptor
from .observer import Observer, event_hook
from .routing import FlowState, incoming
from .warden import Warden

log = logging.getLogger(__name__)

KEY = "contextwarden_ws"
_CREATE_HEAD = re.compile(rb'\A\s*\{\s*"type"\s*:\s*"([^"\\]*)"')
# the events after which the server sends nothing more for a request
_TERMINAL = {"response.completed", "response.failed", "response.incomplete", "response.cancelled", "error"}


@dataclass
class _Request:
    """One ``response.create`` in flight on a socket."""

    flow_id: str
    state: FlowState
    t_sent: float = 0.0
    t_first: float | None = None  # the first server message for it
    status: int | None = None
    blocked: BlockedResponse | None = None  # what a stage answered with, instead of forwarding
    last_type: str | None = None


@dataclass
class _Socket:
    """What is kept on a WebSocket flow of the Responses API."""

    opened: Incoming  # the upgrade request: each message is a request with its host, path and headers
    count: int = 0
    pending: deque[_Request] = field(default_factory=deque)


def message_type(content: bytes) -> str | None:
    """The ``type`` of a Responses WebSocket message (None when it is not a JSON object with one).
    Codex writes ``type`` first: read from the head; otherwise the whole message is parsed."""
    m = _CREATE_HEAD.match(content)
    if m is not None:
        return m.group(1).decode("utf-8", "replace")
    try:
        obj = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    t = obj.get("type") if isinstance(obj, dict) else None
    return t if isinstance(t, str) else None


class WebSocketResponses:
    def __init__(self, warden: Warden, interceptor: Interceptor) -> None:
        self.warden = warden
        self.interceptor = interceptor
        self._tasks: set[asyncio.Task[None]] = set()
        # how a message reaches the client unasked; None: mitmproxy's inject.websocket here (the engine
        # sets its own: the message goes back to mitmdump's process with the reply)
        self.inject: Callable[[http.HTTPFlow, bytes], None] | None = None

    # -- the upgrade request ----------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        """A WebSocket opened to a Responses endpoint: remember it (its proxy headers taken off)."""
        rt = self.warden.runtime
        opened = incoming(flow, rt.settings.proxy, WEBSOCKET) if rt is not None else None
        if opened is not None:
            flow.metadata[KEY] = _Socket(opened)

    # -- messages ---------------------------------------------------------------------------

    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        sock: _Socket | None = flow.metadata.get(KEY)
        rt = self.warden.runtime
        if sock is None or rt is None or flow.websocket is None or not flow.websocket.messages:
            return
        msg = flow.websocket.messages[-1]
        if msg.injected or not msg.is_text:
            return
        try:
            if msg.from_client:
                await self._client_message(flow, sock, msg)
            else:
                self._server_message(flow, sock, msg)
        except Exception as e:  # the message still goes as it is
            log.exception("contextwarden: websocket message")
            rt.bus.emit("error", {"where": "websocket", "message": f"{type(e).__name__}: {e}",
                                  "action": "message forwarded unchanged"}, flow_id=flow.id)

    async def _client_message(self, flow: http.HTTPFlow, sock: _Socket, msg: WebSocketMessage) -> None:
        raw = msg.content
        if message_type(raw) != "response.create":
            return  # anything else (response.cancel, pings as JSON, ...) passes unread
        r = _Request(f"{flow.id}.{sock.count}", FlowState(api=sock.opened.api, t_request=time.time()))
        sock.count += 1
        sock.pending.append(r)

        def rewrite(body: bytes) -> int:
            msg.content = body
            return len(body)

        def block(b: BlockedResponse) -> None:
            r.blocked = b

        await self.interceptor.run(r.state, dataclasses.replace(sock.opened, raw=raw, flow_id=r.flow_id), rewrite, block)
        r.t_sent = time.time()
        if r.blocked is not None:
            self._answer_blocked(flow, sock, r.blocked, r, msg)

    def _answer_blocked(self, flow: http.HTTPFlow, sock: _Socket, b: BlockedResponse, r: _Request,
                        msg: WebSocketMessage) -> None:
        """A stage answered instead of forwarding (a BLOCKED budget): the client gets the provider's
        error as an ``error`` event and its message is dropped; if that fails, the message goes upstream."""
        try:
            error = orjson.loads(b.body)
        except orjson.JSONDecodeError:
            error = {"error": {"message": b.body.decode("utf-8", "replace")}}
        event = {"type": "error", "status": b.status, **(error if isinstance(error, dict) else {"error": error}),
                 "headers": dict(b.headers)}
        data = orjson.dumps(event)
        try:
            (self.inject or _inject)(flow, data)
        except Exception as e:
            rt = self.warden.runtime
            if rt is not None:
                rt.bus.emit("error", {"where": "websocket", "message": f"{type(e).__name__}: {e}",
                                      "action": "blocked request forwarded"}, flow_id=r.flow_id)
            return
        msg.drop()  # type: ignore[no-untyped-call]  # unannotated in mitmproxy
        self._feed(sock, r, data)

    def _server_message(self, flow: http.HTTPFlow, sock: _Socket, msg: WebSocketMessage) -> None:
        if not sock.pending:
            return
        self._feed(sock, sock.pending[0], msg.content)

    def _feed(self, sock: _Socket, r: _Request, data: bytes) -> None:
        st = r.state
        if r.t_first is None:
            r.t_first = time.time()
        if st.tap is None:
            st.tap = ResponseTap(sock.opened.api, "", None, self._on_event(r))
        st.tap.feed_message(data)
        if r.last_type in _TERMINAL:
            if r in sock.pending:
                sock.pending.remove(r)
            self._spawn(self._finish(r, None))

    def _on_event(self, r: _Request) -> Callable[[dict[str, Any]], None]:
        rt = self.warden.runtime
        hook = event_hook(rt, r.state, r.flow_id) if rt is not None else None

        def on_event(event: dict[str, Any]) -> None:
            t = event.get("type")
            r.last_type = t if isinstance(t, str) else None
            if t == "error":
                s = event.get("status")
                r.status = s if isinstance(s, int) else 400
            elif t in _TERMINAL:
                r.status = 200
            if hook is not None:
                hook(event)

        return on_event

    # -- the end of a request ---------------------------------------------------------------

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        sock: _Socket | None = flow.metadata.get(KEY)
        if sock is None:
            return
        ws = flow.websocket
        why = f"websocket closed ({ws.close_code})" if ws is not None and ws.close_code not in (None, 1000) else "websocket closed"
        while sock.pending:
            self._spawn(self._finish(sock.pending.popleft(), why))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, r: _Request, error: str | None) -> None:
        """The ``response`` event and the turn's completion, as Observer._finish does for HTTP."""
        rt = self.warden.runtime
        if rt is None:
            return
        st = r.state
        upstream_ms = round((r.t_first - r.t_sent) * 1000, 1) if r.t_first and r.t_sent else None
        data = {"api": st.api.value, "status": r.status, "upstream_ms": upstream_ms,
                "total_ms": round((time.time() - st.t_request) * 1000, 1), "error": error, "streamed": True,
                "transport": "websocket"}
        await Observer.report(rt, st, r.flow_id, data, st.tap, error)


def _inject(flow: http.HTTPFlow, data: bytes) -> None:
    """Send ``data`` to the client as a text message of the flow's WebSocket."""
    mitmctx.master.commands.call("inject.websocket", flow, True, data, True)


class _Utf8Fragmentizer(ws_layer.Fragmentizer):
    """mitmproxy re-frames a modified text message in 4,000-byte pieces decoded one by one, corrupting a
    character that straddles a cut: here it is cut at character boundaries only (one frame when the
    client sent one). Unmodified messages keep the client's framing."""

    def __call__(self, content: bytes) -> Iterator[Message[Any]]:
        if not self.is_text:
            yield from super().__call__(content)
            return
        lengths = self.fragment_lengths
        if len(content) == sum(lengths) and all(_boundary(content, o) for o in _offsets(lengths)):
            yield from super().__call__(content)
            return
        if len(lengths) <= 1:
            yield self.msg(content, True)
            return
        size = max(self.FRAGMENT_SIZE, max(lengths))
        offset = 0
        while len(content) - offset > size:
            cut = offset + size
            while cut > offset + 1 and not _boundary(content, cut):
                cut -= 1
            yield self.msg(content[offset:cut], False)
            offset = cut
        yield self.msg(content[offset:], True)


def _offsets(lengths: list[int]) -> list[int]:
    out, o = [], 0
    for n in lengths[:-1]:
        o += n
        out.append(o)
    return out


def _boundary(content: bytes, i: int) -> bool:
    """Whether a cut before byte ``i`` falls between two UTF-8 characters."""
    return i <= 0 or i >= len(content) or (content[i] & 0xC0) != 0x80


ws_layer.Fragmentizer = _Utf8Fragmentizer  # type: ignore[misc]  # mitmproxy's class replaced: no hook for it
