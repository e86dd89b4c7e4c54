"""mitmproxy addon: ``POST /v1/messages/count_tokens`` is answered for the request the proxy would send.

A client that counts its history with the provider (Claude Code's context display, an SDK user sizing a
request) would otherwise count what it holds, while every request goes upstream cleared and compacted:
the two disagree, and a client deciding from the count would compact on its own for nothing. The body
is rewritten into the session's decided state (every stored decision re-applied through the stages'
``cw_reapply``, nothing new decided: :mod:`contextwarden.sessionctl.preview`, which changes no session
state), and forwarded, so the provider counts it. Fails open: any problem forwards the body untouched.
A rewritten one is announced by a ``count_tokens`` event (tokens as the client sent them and as
forwarded); one the session's decisions leave as it is passes untouched and unannounced, as before.
"""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import http

from contextwarden import lifecycle
from contextwarden.apis import COUNT
from contextwarden.pipeline import Skip

from .interceptor import consume_headers
from .routing import route_of
from .warden import Warden

log = logging.getLogger(__name__)



class CountTokens:
    def __init__(self, warden: Warden) -> None:
        self.warden = warden

    async def request(self, flow: http.HTTPFlow) -> None:
        rt = self.warden.runtime
        req = flow.request
        if rt is None or flow.response is not None:
            return
        got = route_of(flow, rt.settings.proxy)
        if got is None or got[0] != COUNT:
            return
        consumed = consume_headers(flow, rt.settings.proxy.consumed_headers)  # never sent upstream
        if rt.passive() or consumed.get("x-contextwarden-bypass"):
            return
        headers = list(req.headers.items(multi=True))
        raw = req.raw_content or b""
        try:
            body = await asyncio.get_running_loop().run_in_executor(
                rt.core_pool, self._rewrite, rt, flow.id, got[1], req.host, req.path, headers, raw, consumed)
        except Exception as e:  # fail open
            log.exception("contextwarden: count_tokens")
            rt.bus.emit("error", {"where": "count_tokens", "message": f"{type(e).__name__}: {e}",
                                  "action": "forwarded unchanged"}, flow_id=flow.id)
            return
        if body is not None:
            req.content = body

    @staticmethod
    def _rewrite(rt, flow_id, api, host, path, headers, raw, consumed) -> bytes | None:
        from contextwarden.sessionctl.preview import decided_state

        try:
            ctx = lifecycle.admit(rt, flow_id, api, host, path, headers, raw, consumed)  # (the API route found)
        except Skip:  # not a body we read: it goes as it came, like any request we do not manage
            return None
        if ctx.session in rt.bypass:
            return None
        body, tokens = decided_state(rt, ctx)
        if body is not None:  # (a session with nothing decided: untouched and unannounced, as before)
            ctx.emit("count_tokens", changed=True, tokens_in=ctx.tokens_in, tokens_out=tokens,
                     messages=len(ctx.original.get("messages") or []))
        return body
