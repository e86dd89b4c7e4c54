"""Streams every response of a recognised request through unchanged, reading it on the side: the tap
keeps a reference to each chunk, and the turn is read from them once the response has ended, on the
turn pool (each chunk is read as it comes only when a plugin has ``cw_response_event``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from mitmproxy import http

from contextwarden.core.runtime import Runtime
from contextwarden.request import lifecycle
from contextwarden.request.context import RequestContext
from contextwarden.wire.streams.tap import ResponseTap

from .routing import STATE, FlowState
from .warden import Warden

log = logging.getLogger(__name__)


class Observer:
    def __init__(self, warden: Warden) -> None:
        self.warden = warden

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        st: FlowState | None = flow.metadata.get(STATE)
        rt = self.warden.runtime
        if st is None or rt is None or flow.response is None or flow.response.stream:
            return
        st.tap = ResponseTap(st.api, flow.response.headers.get("content-type", ""),
                             flow.response.headers.get("content-encoding"), event_hook(rt, st, flow.id))
        feed = st.tap.feed

        def stream(chunk: bytes) -> bytes:
            if chunk:
                feed(chunk)  # never raises; a reader error only disables the reader
            return chunk

        flow.response.stream = stream

    async def response(self, flow: http.HTTPFlow) -> None:
        await self._finish(flow, error=None)

    async def error(self, flow: http.HTTPFlow) -> None:
        await self._finish(flow, error=str(flow.error) if flow.error else "error")

    async def _finish(self, flow: http.HTTPFlow, error: str | None) -> None:
        st: FlowState | None = flow.metadata.get(STATE)
        rt = self.warden.runtime
        if st is None or rt is None or st.finished:
            return
        st.finished = True
        resp = flow.response
        tap = st.tap
        if tap is None and resp is not None and resp.raw_content:
            # a response we did not stream (set by a stage, e.g. BLOCKED): read it whole
            tap = ResponseTap(st.api, resp.headers.get("content-type", ""), resp.headers.get("content-encoding"), None)
            tap.feed(resp.raw_content)
        upstream_ms = None
        if resp is not None and resp.timestamp_start and flow.request.timestamp_end:
            upstream_ms = round((resp.timestamp_start - flow.request.timestamp_end) * 1000, 1)
        done_ms = round(((resp.timestamp_end if resp and resp.timestamp_end else time.time()) - st.t_request) * 1000, 1)
        data = {"api": st.api.value, "status": resp.status_code if resp is not None else None, "upstream_ms": upstream_ms,
                "total_ms": done_ms, "error": error, "streamed": bool(tap and tap.is_sse)}
        try:
            await self.report(rt, st, flow.id, data, tap, error)
        finally:
            release(flow, st)

    @staticmethod
    async def report(rt: Runtime, st: FlowState, flow_id: str, data: dict[str, Any], tap: ResponseTap | None,
                     error: str | None) -> None:
        """Once the request's context is known, on the turn pool: the turn read from the tap, the
        ``response`` event (``data`` plus the turn's summary) and the turn's completion. For an HTTP
        response, and for an answer on the Responses WebSocket (addons/websocket.py)."""
        if st.start_observe is not None:  # an observed request not read yet: read it now
            st.start_observe()
        try:
            ctx = await st.ctx_future if st.ctx_future is not None else None
        except Exception:
            ctx = None
        try:
            fut = rt.turn_pool.submit(_read_and_complete, rt, ctx, flow_id, data, tap, error, True)
        except RuntimeError:  # the pool is shut down (the proxy is stopping): the event still goes
            _read_and_complete(rt, ctx, flow_id, data, tap, error, False)
            return
        # a full pool drops its oldest work: that turn's completion is lost, its response event is not
        def dropped(f: Future[Any]) -> None:
            if f.cancelled():
                _read_and_complete(rt, ctx, flow_id, data, tap, error, False)

        fut.add_done_callback(dropped)


def event_hook(rt: Runtime, st: FlowState, flow_id: str) -> Callable[[dict[str, Any]], None] | None:
    """The ``cw_response_event`` hooks called with each event of the answer as it is read, and the
    request's context once known (None when no plugin has the hook: the answer is read at its end)."""
    hook = rt.pm.hook.cw_response_event
    if not hook.get_hookimpls():
        return None

    def on_event(event: dict[str, Any]) -> None:
        fut = st.ctx_future
        ctx = fut.result() if fut is not None and fut.done() and not fut.cancelled() and fut.exception() is None else None
        try:
            hook(ctx=ctx, event=event)
        except Exception as e:
            rt.bus.emit("error", {"where": "cw_response_event", "message": f"{type(e).__name__}: {e}"}, flow_id=flow_id)

    return on_event


def _read_and_complete(rt: Runtime, ctx: RequestContext | None, flow_id: str, data: dict[str, Any], tap: ResponseTap | None,
                       error: str | None,
                       complete: bool) -> None:
    """The turn read from the tap (its deferred reading, off the loop), the ``response`` event, and,
    when ``complete``, the turn's completion: calibration, cw_turn_complete hooks, the turn event."""
    turn = tap.finish(error) if tap is not None else None  # never raises
    if turn is not None:
        data.update(turn.summary())
    if tap is not None and tap.failed:
        data["reader_failed"] = tap.failed  # the client still got every byte; only our reading stopped
    rt.bus.emit("response", data, flow_id=flow_id, session=ctx.session if ctx else None)
    if complete and ctx is not None and turn is not None:
        lifecycle.complete(rt, ctx, turn)


def release(flow: http.HTTPFlow, st: FlowState) -> None:
    """Drop what the flow holds of ours once it is reported: the flow (freed by reference counting,
    ``contextwarden.core.flowrelease``) must not keep the request's context or the response's reader
    alive, nor be part of a cycle of ours."""
    flow.metadata.pop(STATE, None)
    st.ctx_future = None
    st.tap = None

