"""Recognises LLM API requests and runs them through the stage pipeline, failing open.

``POST /v1/messages/count_tokens`` (route COUNT) is rewritten into the session's decided state (every
stored decision re-applied, nothing new decided) and forwarded, so the provider counts what the proxy
would send; any problem forwards it untouched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable

from mitmproxy import http

from contextwarden.core.runtime import Runtime
from contextwarden.request import lifecycle
from contextwarden.request.context import BlockedResponse, Incoming, RequestContext
from contextwarden.request.pipeline import Outcome
from contextwarden.wire.apis import COUNT, HTTP

from .routing import FORWARDED, STATE, FlowState, bypass_asked, incoming
from .warden import Warden

log = logging.getLogger(__name__)

# When an observed request is read if its flow has not ended by then (seconds after forwarding).
OBSERVE_AFTER_S = 0.25


class Interceptor:
    def __init__(self, warden: Warden) -> None:
        self.warden = warden

    async def request(self, flow: http.HTTPFlow) -> None:
        rt = self.warden.runtime
        req = incoming(flow, rt.settings.proxy, HTTP, COUNT) if rt is not None else None
        if rt is None or req is None:
            return
        if req.route == COUNT:
            if not (rt.passive() or bypass_asked(req.consumed.get("x-contextwarden-bypass"))):
                await _count(rt, flow, req)
            return
        state = flow.metadata[STATE] = FlowState(api=req.api, t_request=time.time())

        def rewrite(body: bytes) -> int:
            flow.request.content = body  # re-encoded with the client's content-encoding
            return len(flow.request.raw_content or b"")

        def block(b: BlockedResponse) -> None:
            flow.response = http.Response.make(b.status, b.body, b.headers)

        await self.run(state, req, rewrite, block, forwarded=bool(flow.metadata.get(FORWARDED)))

    async def run(self, state: FlowState, req: Incoming, rewrite: Callable[[bytes], int],
                  block: Callable[[BlockedResponse], None], forwarded: bool = False) -> None:
        """One request, whatever carries it (an HTTP request, a Responses WebSocket message):
        ``lifecycle.run``, then ``rewrite(body) -> bytes sent`` puts a rewritten body in place or
        ``block(BlockedResponse)`` answers instead; neither is called when the original goes (nor for a
        request already ``forwarded``: it is observed). ``state.ctx_future`` resolves to the request's
        context (None when it could not be read)."""
        rt = self.warden.runtime
        assert rt is not None  # (request: a runtime; a WebSocket message: its socket opened under one)
        loop = asyncio.get_running_loop()
        bypass = bypass_asked(req.consumed.get("x-contextwarden-bypass"))
        fut = state.ctx_future = loop.create_future()
        if forwarded or rt.passive() or bypass:
            # Forward at once and read the request later, on a worker thread. Reading it (parse, count,
            # events) holds the GIL for ~20 ms at 150K tokens: started now, it would delay relaying this
            # very flow's bytes. It starts once the request is well on its way (the upstream is still
            # thinking) or when the flow ends, whichever comes first (bench/proxy_latency.py).
            observed = dataclasses.replace(req, mode="bypass" if bypass else "observe")
            state.start_observe = lambda: _start_observe(rt, state, observed)
            loop.call_later(OBSERVE_AFTER_S, state.start_observe)
            return
        ctx = outcome = None
        try:
            ctx, outcome = await lifecycle.run(rt, dataclasses.replace(req, mode="active"))
        finally:
            fut.set_result(ctx)
        if ctx is not None and outcome is not None:
            _apply(state, req, ctx, outcome, rewrite, block)


async def _count(rt: Runtime, flow: http.HTTPFlow, req: Incoming) -> None:
    try:
        _, outcome = await lifecycle.run(rt, req)
    except Exception as e:  # fail open
        log.exception("contextwarden: count_tokens")
        rt.bus.emit("error", {"where": "count_tokens", "message": f"{type(e).__name__}: {e}",
                              "action": "forwarded unchanged"}, flow_id=flow.id)
        return
    if outcome is not None and outcome.body is not None:
        flow.request.content = outcome.body


def _apply(state: FlowState, req: Incoming, ctx: RequestContext, outcome: Outcome, rewrite: Callable[[bytes], int],
           block: Callable[[BlockedResponse], None]) -> None:
    """The outcome put in place (a rewrite or an answer) and the ``forward`` event."""
    ms = round((time.perf_counter() - ctx.started) * 1000, 3)
    n = len(req.raw)
    if outcome.blocked is not None:
        b = outcome.blocked
        block(b)
        ctx.emit("forward", changed=False, blocked=True, reason=outcome.reason, status=b.status, pipeline_ms=ms,
                 tokens_in=ctx.tokens_in)
        return
    changed = outcome.body is not None
    bytes_out = rewrite(outcome.body) if outcome.body is not None else n
    ctx.emit("forward", changed=changed, reason=outcome.reason, bytes_in=n, bytes_out=bytes_out,
             tokens_in=ctx.tokens_in, tokens_out=ctx.tokens_out if changed else ctx.tokens_in, pipeline_ms=ms,
             stages=ctx.stage_results, fallback=outcome.fallback, fallback_reason=outcome.fallback_reason,
             hook_ms=round((time.time() - state.t_request) * 1000, 3),
             timings=dict(ctx.timings))  # (a copy: a stage call abandoned past its budget may still add to it)


def _start_observe(rt: Runtime, state: FlowState, req: Incoming) -> None:
    """``lifecycle.observe`` on the core pool, once per flow (the timer and the end of the flow both
    call this); ``state.ctx_future`` resolves to its context."""
    if state.start_observe is None:
        return
    state.start_observe = None
    out = state.ctx_future
    assert out is not None  # (set before the observation is scheduled)
    try:
        work = asyncio.get_running_loop().run_in_executor(rt.core_pool, lifecycle.observe, rt, req)
    except RuntimeError:  # the runtime was closed meanwhile (shutdown, profile switch)
        if not out.done():
            out.set_result(None)
        return

    def settle(w: asyncio.Future[RequestContext | None]) -> None:
        if not out.done():
            out.set_result(None if w.cancelled() or w.exception() else w.result())

    work.add_done_callback(settle)
