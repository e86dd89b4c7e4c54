"""Recognises LLM API requests and runs them through the stage pipeline, failing open."""

from __future__ import annotations

import asyncio
import logging
import time

from mitmproxy import http

from contextwarden import lifecycle
from contextwarden.apis import HTTP
from contextwarden.flowstate import FORWARDED, FlowState, bypass_asked
from contextwarden.pipeline import ORIGIN, Skip

from .routing import route_of
from .warden import Warden

log = logging.getLogger(__name__)

# When an observed request is read if its flow has not ended by then (seconds after forwarding).
OBSERVE_AFTER_S = 0.25


class Interceptor:
    def __init__(self, warden: Warden) -> None:
        self.warden = warden

    async def request(self, flow: http.HTTPFlow) -> None:
        rt = self.warden.runtime
        if rt is None or flow.response is not None:
            return
        req = flow.request
        got = route_of(flow, rt.settings.proxy)
        if got is None or got[0] != HTTP:
            return
        api = got[1]
        consumed = consume_headers(flow, rt.settings.proxy.consumed_headers)
        state = FlowState(api=api, t_request=time.time())
        flow.metadata["contextwarden"] = state
        headers = list(req.headers.items(multi=True))

        def rewrite(body: bytes) -> int:
            req.content = body  # re-encoded with the client's content-encoding
            return len(req.raw_content or b"")

        def block(b) -> None:
            flow.response = http.Response.make(b.status, b.body, b.headers)

        await self.run(state, flow.id, api, req.host, req.path, headers, req.raw_content or b"", consumed, rewrite, block,
                       forwarded=bool(flow.metadata.get(FORWARDED)))

    async def run(self, state: FlowState, flow_id: str, api, host: str, path: str, headers: list[tuple[str, str]],
                  raw: bytes, consumed: dict[str, str], rewrite, block, transport: str = "http",
                  forwarded: bool = False) -> None:
        """One request's lifecycle, whatever carries it (an HTTP request, a Responses WebSocket message):
        announce, run the stages, validate, then ``rewrite(body) -> bytes sent`` puts a rewritten body in
        place or ``block(BlockedResponse)`` answers instead; neither is called when the original goes
        (nor for a request already ``forwarded``: it is observed).
        ``state.ctx_future`` resolves to the request's context (None when it could not be read)."""
        rt = self.warden.runtime
        loop = asyncio.get_running_loop()
        bypass = bypass_asked(consumed.get("x-contextwarden-bypass"))
        observe = forwarded or rt.passive() or bypass

        if observe:
            # Forward at once and read the request later, on a worker thread. Reading it (parse, count,
            # events) holds the GIL for ~20 ms at 150K tokens: started now, it would delay relaying this
            # very flow's bytes. It starts once the request is well on its way (the upstream is still
            # thinking) or when the flow ends, whichever comes first (bench/proxy_latency.py).
            state.ctx_future = loop.create_future()
            args = (rt, flow_id, api, host, path, headers, raw, consumed, "bypass" if bypass else "observe", transport)
            state.extra["start_observe"] = lambda: self._start_observe(state, args)
            loop.call_later(OBSERVE_AFTER_S, state.extra["start_observe"])
            return

        # read the request (parse, identify, count, announce) and run its stages in ONE trip to a stage
        # thread (Pipeline.admit_and_process); the flow's context is known once the trip is back
        fut = state.ctx_future = loop.create_future()
        admitted: list = []
        try:
            ctx, outcome = await lifecycle.admit_and_process(
                rt, lambda: self._admit(rt, admitted, flow_id, api, host, path, headers, raw, consumed, transport))
        except Exception as e:
            log.exception("contextwarden: pipeline failed")
            if admitted:
                admitted[0].emit("error", where="pipeline", message=f"{type(e).__name__}: {e}", action="forwarded original")
            return
        finally:
            if not fut.done():
                fut.set_result(admitted[0] if admitted else None)
        if ctx is None:
            return
        if outcome is None:
            ctx.emit("forward", changed=False, reason="session bypassed", bytes_in=len(raw), bytes_out=len(raw),
                     tokens_in=ctx.tokens_in, tokens_out=ctx.tokens_in, pipeline_ms=0.0)
            return
        ms = round((time.perf_counter() - ctx.started) * 1000, 3)
        if outcome.blocked is not None:
            b = outcome.blocked
            block(b)
            ctx.emit("forward", changed=False, blocked=True, reason=outcome.reason, status=b.status, pipeline_ms=ms,
                     tokens_in=ctx.tokens_in)
            return
        bytes_out = len(raw)
        if outcome.body is not None:
            if rt.settings.log.record_bodies:
                state.rewritten = outcome.body
            bytes_out = rewrite(outcome.body)
        ctx.emit("forward", changed=outcome.body is not None, reason=outcome.reason, bytes_in=len(raw),
                 bytes_out=bytes_out, tokens_in=ctx.tokens_in,
                 tokens_out=ctx.tokens_out if outcome.body is not None else ctx.tokens_in, pipeline_ms=ms,
                 stages=ctx.stage_results, fallback=outcome.fallback, fallback_reason=outcome.fallback_reason,
                 hook_ms=round((time.time() - state.t_request) * 1000, 3),
                 timings=dict(ctx.timings))  # (a copy: a stage call abandoned past its budget may still add to it)

    def _start_observe(self, state: FlowState, args: tuple) -> None:
        """Run :meth:`_observe` once per flow (the timer and the end of the flow both call this)."""
        if state.extra.pop("start_observe", None) is None:
            return
        out = state.ctx_future
        try:
            work = asyncio.get_running_loop().run_in_executor(args[0].core_pool, self._observe, *args)
        except RuntimeError:  # the runtime was closed meanwhile (shutdown, profile switch)
            if not out.done():
                out.set_result(None)
            return

        def settle(w: asyncio.Future) -> None:
            if not out.done():
                out.set_result(None if w.cancelled() or w.exception() else w.result())

        work.add_done_callback(settle)

    @staticmethod
    def _admit(rt, admitted: list, flow_id, api, host, path, headers, raw, consumed, transport):
        """lifecycle.admit on the stage thread: prepare, tokens_in and the ``request`` event (mode
        ``bypass`` for a bypassed session); ``(ctx, whether its stages run)``, ``(None, False)`` when the
        request cannot be read (an ``error`` event says why; it goes unchanged). The context is also
        put in ``admitted``, for the loop should the trip fail after it."""
        try:
            ctx = lifecycle.admit(rt, flow_id, api, host, path, headers, raw, consumed, transport,
                                  mode=lambda c: "bypass" if c.session in rt.bypass else "active")
        except Skip as e:
            rt.bus.emit("error", {"where": "parse", "message": str(e), "action": "forwarded unchanged", "api": api.value,
                                  "path": path, "bytes": len(raw)}, flow_id=flow_id)
            return None, False
        except Exception as e:  # fail open on our own bugs too
            log.exception("contextwarden: prepare failed")
            rt.bus.emit("error", {"where": "prepare", "message": f"{type(e).__name__}: {e}", "action": "forwarded unchanged"}, flow_id=flow_id)
            return None, False
        admitted.append(ctx)
        return ctx, ctx.session not in rt.bypass

    @staticmethod
    def _observe(rt, flow_id, api, host, path, headers, raw, consumed, mode, transport="http"):
        t0 = time.perf_counter()
        try:
            ctx = lifecycle.admit(rt, flow_id, api, host, path, headers, raw, consumed, transport, mode=mode)
        except Skip as e:
            rt.bus.emit("error", {"where": "parse", "message": str(e), "action": "forwarded unchanged",
                                  "api": api.value, "path": path, "bytes": len(raw)}, flow_id=flow_id)
            return None
        except Exception as e:
            rt.bus.emit("error", {"where": "prepare", "message": f"{type(e).__name__}: {e}", "action": "forwarded unchanged"}, flow_id=flow_id)
            return None
        rt.remember(ctx, None, len(raw))
        ctx.emit("forward", changed=False, reason=mode, bytes_in=len(raw), bytes_out=len(raw),
                 tokens_in=ctx.tokens_in, tokens_out=ctx.tokens_in,
                 pipeline_ms=round((time.perf_counter() - t0) * 1000, 3))
        return ctx


def consume_headers(flow: http.HTTPFlow, names) -> dict[str, str]:
    """Take the headers addressed to the proxy itself off a request (they never go upstream), and add
    who sent it (``ORIGIN``: no header a client can send sets it)."""
    headers = flow.request.headers
    consumed = {}
    for name in names:
        if name in headers:
            consumed[name.lower()] = headers.pop(name)
    consumed[ORIGIN] = origin_of(flow)
    return consumed


def origin_of(flow: http.HTTPFlow) -> str:
    """Who sent a request, as far as the proxy can vouch for it: the user of the proxy credential when
    the proxy requires one (mitmproxy's proxyauth), else the client's address. It scopes the tenant of
    a request without a provider credential (``pipeline.prepare``): a client can guess a session id,
    not this."""
    auth = flow.metadata.get("proxyauth")
    if auth:
        return f"user:{auth[0]}"
    peer = flow.client_conn.peername
    return f"addr:{peer[0]}" if peer else ""
