"""One decision of which requests are ours (contextwarden.wire.apis.route), taken alike by the interceptor,
the count_tokens and WebSocket addons and the engine link: what crosses to the engine is exactly what
the engine's addons handle."""

import pytest
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow

from contextwarden.addons.routing import ROUTE, routed
from contextwarden.models.base import ApiKind
from contextwarden.settings import load_settings
from contextwarden.wire.apis import COUNT, HTTP, WEBSOCKET, route

A, C, R = ApiKind.ANTHROPIC, ApiKind.OPENAI_CHAT, ApiKind.OPENAI_RESPONSES


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    return load_settings("claude-code", tmp_path_factory.mktemp("home")).proxy


@pytest.mark.parametrize("method, host, path, upgrade, want", [
    ("POST", "api.anthropic.com", "/v1/messages", None, (HTTP, A)),
    ("POST", "api.anthropic.com", "/v1/messages?beta=true", None, (HTTP, A)),
    ("POST", "api.anthropic.com", "/v1/messages/count_tokens", None, (COUNT, A)),
    ("POST", "api.anthropic.com", "/v1/messages/count_tokens?beta=true", None, (COUNT, A)),
    ("POST", "api.openai.com", "/v1/chat/completions", None, (HTTP, C)),
    ("POST", "api.openai.com", "/v1/responses", None, (HTTP, R)),
    ("POST", "api.openai.com", "/v1/responses/compact", None, None),  # Codex's own compaction
    ("POST", "api.openai.com", "/v1/chat/completions/count_tokens", None, None),  # not an Anthropic count
    ("GET", "api.openai.com", "/v1/responses", "websocket", (WEBSOCKET, R)),
    ("GET", "chatgpt.com", "/backend-api/codex/responses", "WebSocket", (WEBSOCKET, R)),
    ("GET", "api.openai.com", "/v1/responses", None, None),
    ("GET", "api.anthropic.com", "/v1/messages", "websocket", None),  # only Responses has a socket
    ("GET", "api.anthropic.com", "/v1/models", None, None),
    ("POST", "example.com", "/v1/messages", None, None),  # an unknown host: passes untouched
    ("POST", "example.com", "/v1/messages/count_tokens", None, None),
])
def test_route(proxy, method, host, path, upgrade, want):
    assert route(method, host, 443, path, upgrade, proxy) == want


def route_of(flow, proxy):
    flow.metadata.pop(ROUTE, None)  # (decided once per flow: asked afresh here)
    return routed(flow, proxy)


def test_in_reverse_mode_the_host_is_the_configured_upstream(proxy):
    f = tflow.tflow()
    f.request.method, f.request.host, f.request.port, f.request.path = "POST", "127.0.0.1", 8080, "/v1/messages/count_tokens"
    assert route_of(f, proxy) is None
    f.client_conn.proxy_mode = ProxyMode.parse("reverse:https://api.anthropic.com")
    assert route_of(f, proxy) == (COUNT, A)
    f.request.path = "/v1/messages"
    assert route_of(f, proxy) == (HTTP, A)
