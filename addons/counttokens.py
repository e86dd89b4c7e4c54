"""mitmproxy addon: ``POST /v1/messages/count_tokens`` is answered for the request the proxy would send.

A client that counts its history with the provider (Claude Code's context display, an SDK user sizing a
request) would otherwise count what it holds, while every request goes upstream cleared and compacted:
the two disagree, and a client deciding from the count would compact on its own for nothing. The body
is rewritten into the session's decided state (every stored decision re-applied through the stages'
``cw_reapply``, nothing new decided, no session state changed), and forwarded, so the provider counts it. Fails open: any problem forwards the body untouched.
A rewritten one is announced by a ``count_tokens`` event (tokens as the client sent them and as
forwarded); one the session's decisions leave as it is passes untouched and unannounced, as before.
"""

from __future__ import annotations

import logging

from mitmproxy import http

from contextwarden.request import lifecycle
from contextwarden.wire.apis import COUNT

from .routing import incoming
from .warden import Warden

log = logging.getLogger(__name__)


class CountTokens:
    def __init__(self, warden: Warden) -> None:
        self.warden = warden

    async def request(self, flow: http.HTTPFlow) -> None:
        rt = self.warden.runtime
        if rt is None:
            return
        req = incoming(flow, rt.settings.proxy, COUNT)  # (its proxy headers taken off)
        if req is None or rt.passive() or req.consumed.get("x-contextwarden-bypass"):
            return
        try:
            _, outcome = await lifecycle.run(rt, req)
        except Exception as e:  # fail open
            log.exception("contextwarden: count_tokens")
            rt.bus.emit("error", {"where": "count_tokens", "message": f"{type(e).__name__}: {e}",
                                  "action": "forwarded unchanged"}, flow_id=flow.id)
            return
        if outcome is not None and outcome.body is not None:
            flow.request.content = outcome.body
