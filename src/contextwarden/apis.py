"""Which requests are ours: recognised by host and path; everything else passes untouched."""

from __future__ import annotations

from .models.base import ApiKind
from .settings.proxy import ProxySection


def _path_api(path: str, ollama: bool) -> ApiKind | None:
    p = path.split("?", 1)[0].rstrip("/")
    if p == "/v1/messages" or p.endswith("/anthropic/v1/messages"):
        return ApiKind.ANTHROPIC
    if p.endswith("/v1/chat/completions") or p.endswith("/api/v1/chat/completions"):
        return ApiKind.OPENAI_CHAT
    if p.endswith("/v1/responses") or p.endswith("/backend-api/codex/responses"):
        # (Codex signed in with a ChatGPT plan uses the second; /responses/compact, Codex's own
        # compaction request, is neither and passes untouched)
        return ApiKind.OPENAI_RESPONSES
    if ollama and p == "/api/chat":
        return ApiKind.OLLAMA_CHAT
    return None


def classify(method: str, host: str, port: int, path: str, proxy: ProxySection, reverse: bool = False) -> ApiKind | None:
    """The API of a request, or None when it is not one we handle (count_tokens, models, GETs...)."""
    if method != "POST":
        return None
    host = host.lower()
    hostport = f"{host}:{port}"
    ollama = hostport in proxy.ollama_hosts or host in proxy.ollama_hosts
    api = _path_api(path, ollama or reverse)
    if api is None:
        return None
    if reverse and proxy.reverse_any_host:
        return api
    if api is ApiKind.ANTHROPIC:
        known = proxy.anthropic_hosts
    elif api is ApiKind.OLLAMA_CHAT:
        return api if ollama else None
    else:
        known = proxy.openai_hosts + proxy.openai_compatible_hosts + proxy.ollama_hosts
    return api if (host in known or hostport in known) else None


def classify_websocket(host: str, port: int, path: str, proxy: ProxySection, reverse: bool = False) -> ApiKind | None:
    """The API of a WebSocket opened to ``path``: only the Responses API has a WebSocket transport
    (each client ``response.create`` message is one request); None for any other WebSocket."""
    api = classify("POST", host, port, path, proxy, reverse)
    return api if api is ApiKind.OPENAI_RESPONSES else None


COUNT_TOKENS = "/count_tokens"  # Anthropic's token count of a Messages body: ``/v1/messages/count_tokens``

# What :func:`route` says a request is, by the addon that takes it
HTTP, COUNT, WEBSOCKET = "http", "count_tokens", "websocket"


def route(method: str, host: str, port: int, path: str, upgrade: str | None, proxy: ProxySection,
          reverse: bool = False) -> tuple[str, ApiKind] | None:
    """Which of contextwarden's handlers takes a request, and its API: ``(HTTP, api)`` for a request the
    stages run on (the interceptor), ``(COUNT, ANTHROPIC)`` for a Messages count_tokens request (rewritten
    into the session's decided state), ``(WEBSOCKET, OPENAI_RESPONSES)`` for the opening of a Responses
    WebSocket; None for anything else (it passes untouched). The one decision the interceptor, the
    count_tokens and WebSocket addons and the engine link all take, so that what crosses to the engine
    is exactly what the engine handles. ``upgrade``: the request's ``Upgrade`` header."""
    if method == "POST":
        api = classify(method, host, port, path, proxy, reverse)
        if api is not None:
            return HTTP, api
        p = path.split("?", 1)[0].rstrip("/")
        if p.endswith("/v1/messages" + COUNT_TOKENS) and \
                classify("POST", host, port, p[: -len(COUNT_TOKENS)], proxy, reverse) is ApiKind.ANTHROPIC:
            return COUNT, ApiKind.ANTHROPIC
        return None
    if method == "GET" and (upgrade or "").lower() == "websocket":
        api = classify_websocket(host, port, path, proxy, reverse)
        return (WEBSOCKET, api) if api is not None else None
    return None
