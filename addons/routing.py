"""The route of a flow (:func:`contextwarden.apis.route`), read off mitmproxy's flow: its request and
whether it came in through a reverse proxy mode (any host is then the configured upstream)."""

from __future__ import annotations

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ReverseMode

from contextwarden.apis import route
from contextwarden.models.base import ApiKind
from contextwarden.settings.proxy import ProxySection


def route_of(flow: http.HTTPFlow, proxy: ProxySection) -> tuple[str, ApiKind] | None:
    req = flow.request
    reverse = isinstance(getattr(flow.client_conn, "proxy_mode", None), ReverseMode)
    return route(req.method, req.host, req.port, req.path, req.headers.get("upgrade"), proxy, reverse)
