"""What contextwarden keeps on a flow (its metadata) between its hooks: ``ROUTE`` (decided once; it
crosses to the engine with the flow), ``INCOMING`` (the request object, its proxy headers taken off),
``STATE`` (:class:`FlowState`, until the answer is reported) and ``FORWARDED`` (a flow mitmdump already
forwarded: observed, whatever the settings say by then).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ReverseMode

from contextwarden.models.base import ApiKind
from contextwarden.request.context import Incoming
from contextwarden.request.pipeline import ORIGIN
from contextwarden.settings.proxy import ProxySection
from contextwarden.wire.apis import route

ROUTE = "contextwarden_route"
INCOMING = "contextwarden_incoming"
STATE = "contextwarden"
FORWARDED = "contextwarden_forwarded"


@dataclass
class FlowState:
    api: ApiKind
    t_request: float
    # resolves to the RequestContext (or None when the body could not be handled); in observe-only
    # mode it is still being built on a worker thread while the request is in flight
    ctx_future: asyncio.Future[Any] | None = None
    tap: Any = None  # contextwarden.wire.streams.tap.ResponseTap while a response streams
    start_observe: Callable[[], None] | None = None  # an observed request not read yet: reads it now
    finished: bool = False  # its answer is reported


def bypass_asked(value: str | None) -> bool:
    """Whether an ``x-contextwarden-bypass`` header's value asks for the request to pass unchanged."""
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off")


def routed(flow: http.HTTPFlow, proxy: ProxySection) -> tuple[str, ApiKind] | None:
    """Which handler takes the flow, and its API (None: it passes untouched), decided once per flow."""
    if ROUTE not in flow.metadata:
        req = flow.request
        reverse = isinstance(getattr(flow.client_conn, "proxy_mode", None), ReverseMode)
        flow.metadata[ROUTE] = route(req.method, req.host, req.port, req.path, req.headers.get("upgrade"), proxy, reverse)
    got: tuple[str, ApiKind] | None = flow.metadata[ROUTE]
    return got


def incoming(flow: http.HTTPFlow, proxy: ProxySection, *handlers: str) -> Incoming | None:
    """The flow's request for one of ``handlers`` (HTTP, COUNT, WEBSOCKET: None when it is none of theirs)."""
    got = flow.metadata.get(INCOMING)
    if got is None and flow.response is None:
        r = routed(flow, proxy)
        if r is not None:
            req = flow.request
            consumed = consume_headers(flow, proxy.consumed_headers)
            headers = list(req.headers.items(multi=True))  # type: ignore[no-untyped-call]
            got = flow.metadata[INCOMING] = Incoming(r[1], req.host, req.path, headers, req.raw_content or b"", flow.id,
                                                     consumed, route=r[0])
    return got if got is not None and got.route in handlers else None


def consume_headers(flow: http.HTTPFlow, names: list[str]) -> dict[str, str]:
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
