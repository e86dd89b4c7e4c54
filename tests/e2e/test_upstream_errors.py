"""Upstream failures reach the client as the upstream sent them: 429 (with retry-after), 500, and a
connection dropped in the middle of a streamed or whole body."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.support import rawhttp
from tests.support.sdk import anthropic, openai

from .conftest import Route

ANTHROPIC_BODY = {"model": "claude-opus-4-8", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}
CHAT_BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def _send(route: Route, mode: str, openai_host: bool = False, stream: bool = False):
    path = "/v1/chat/completions" if openai_host else "/v1/messages"
    tag = f"e2e={uuid.uuid4().hex[:12]}"
    body = json.dumps({**(CHAT_BODY if openai_host else ANTHROPIC_BODY), "stream": stream}).encode()
    headers = [("Host", route.host_header(openai_host)), ("Content-Type", "application/json"),
               ("x-api-key" if not openai_host else "Authorization", "sk-errors" if not openai_host else "Bearer sk-errors"),
               ("x-standin-mode", mode)]
    return tag, rawhttp.exchange(route.socket(openai_host), rawhttp.build_request("POST", f"{path}?{tag}", headers, body))


@pytest.mark.parametrize("status", ["429", "500"])
@pytest.mark.parametrize("api", ["anthropic", "openai"])
def test_error_status_passes_through(route: Route, standin, status, api):
    since = route.proxy.mark()
    tag, resp = _send(route, status, openai_host=api == "openai")
    [rec] = standin.requests()
    assert resp.status == int(status) == rec.status
    assert resp.upstream_headers == rec.response_headers  # retry-after and the rest, same order
    assert float(resp.headers[-1][1]) >= 0 and resp.headers[-1][0].lower() == "x-contextwarden-overhead-ms"
    assert resp.body == bytes(rec.response_body)
    if status == "429":
        assert resp.header("retry-after") == standin.retry_after
    err = json.loads(resp.body)
    assert (err["error"]["type"] if api == "anthropic" else err["error"]["code"]) in (
        "rate_limit_error", "api_error", "rate_limit_exceeded", "server_error")
    flow = route.proxy.flow_id(tag, since=since)
    [ev] = route.proxy.flow_events(flow, "response")
    assert ev["data"]["status"] == int(status)


def test_sdk_sees_rate_limit(route: Route, standin):
    with pytest.raises(anthropic.RateLimitError) as e:
        route.anthropic().messages.create(**ANTHROPIC_BODY, extra_headers={"x-standin-mode": "429"})
    assert e.value.response.headers["retry-after"] == standin.retry_after
    assert e.value.body["error"]["type"] == "rate_limit_error"
    with pytest.raises(openai.InternalServerError) as e2:
        route.openai().chat.completions.create(**CHAT_BODY, extra_headers={"x-standin-mode": "500"})
    assert e2.value.status_code == 500


@pytest.mark.parametrize("stream", [True, False], ids=["sse", "json"])
def test_connection_drop_mid_body(route: Route, standin, stream):
    """The client gets exactly what the upstream sent before it hung up, then a broken connection."""
    since = route.proxy.mark()
    tag, resp = _send(route, "drop", stream=stream)
    [rec] = standin.requests()
    assert rec.response_body, "the stand-in sent nothing before dropping"
    assert resp.status == 200
    assert resp.complete is False
    assert resp.body == bytes(rec.response_body)
    if stream:
        assert resp.body.count(b"\n\n") == standin.drop_after_events
    flow = route.proxy.flow_id(tag, since=since)
    [ev] = route.proxy.flow_events(flow, "response")
    assert ev["data"]["error"], ev
    assert route.proxy.alive


def test_sdk_stream_sees_the_drop(route: Route, standin):
    client = route.anthropic()
    seen = []
    with pytest.raises((anthropic.APIConnectionError, anthropic.APIError, Exception)) as e:
        with client.messages.stream(**ANTHROPIC_BODY, extra_headers={"x-standin-mode": "drop"}) as s:
            for ev in s:
                seen.append(ev.type)
    assert seen[:2] == ["message_start", "content_block_start"]
    assert "message_stop" not in seen
    assert not isinstance(e.value, AssertionError)
