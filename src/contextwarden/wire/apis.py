"""Which requests are ours: recognised by host and path (each dialect's ``serves`` and ``known_host``);
everything else passes untouched."""

from __future__ import annotations

from ..models.base import ApiKind
from ..settings.proxy import ProxySection
from .dialects import DIALECTS, path_of


def classify(method: str, host: str, port: int, path: str, proxy: ProxySection, reverse: bool = False) -> ApiKind | None:
    """The API of a request, or None when it is not one we handle (count_tokens, models, GETs...)."""
    if method != "POST":
        return None
    host = host.lower()
    hostport = f"{host}:{port}"
    ollama = hostport in proxy.ollama_hosts or host in proxy.ollama_hosts
    p = path_of(path)
    d = next((d for d in DIALECTS.values() if d.serves(p, ollama or reverse)), None)
    if d is not None and ((reverse and proxy.reverse_any_host) or d.known_host(host, hostport, proxy, ollama)):
        return d.kind
    return None


def classify_websocket(host: str, port: int, path: str, proxy: ProxySection, reverse: bool = False) -> ApiKind | None:
    """The API of a WebSocket opened to ``path``: only an API with a WebSocket transport (Responses: each
    client ``response.create`` message is one request); None for any other WebSocket."""
    api = classify("POST", host, port, path, proxy, reverse)
    return api if api is not None and DIALECTS[api].websocket else None


# What :func:`route` says a request is, by the addon that takes it
HTTP, COUNT, WEBSOCKET = "http", "count_tokens", "websocket"


def route(method: str, host: str, port: int, path: str, upgrade: str | None, proxy: ProxySection,
          reverse: bool = False) -> tuple[str, ApiKind] | None:
    """Which of contextwarden's handlers takes a request, and its API: ``(HTTP, api)`` for a request the
    stages run on (the interceptor), ``(COUNT, api)`` for a token count request of an API that has one
    (Anthropic's ``/v1/messages/count_tokens``: rewritten into the session's decided state),
    ``(WEBSOCKET, api)`` for the opening of a Responses WebSocket; None for anything else (it passes
    untouched). The one decision the interceptor, the count_tokens and WebSocket addons and the engine
    link all take, so that what crosses to the engine is exactly what the engine handles. ``upgrade``:
    the request's ``Upgrade`` header."""
    if method == "POST":
        api = classify(method, host, port, path, proxy, reverse)
        if api is not None:
            return HTTP, api
        p = path_of(path)
        base, _, tail = p.rpartition("/")
        api = classify("POST", host, port, base, proxy, reverse) if tail else None
        return (COUNT, api) if api is not None and DIALECTS[api].count_tokens == "/" + tail else None
    if method == "GET" and (upgrade or "").lower() == "websocket":
        api = classify_websocket(host, port, path, proxy, reverse)
        return (WEBSOCKET, api) if api is not None else None
    return None
