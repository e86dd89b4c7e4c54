"""Lossless forwarding: the bytes and header list the upstream receives equal what the client sent.

Client-side capture: byte-exact requests built here (rawhttp), the SDKs' own request hook (the
request object httpx2 puts on the wire), and a recording TCP relay in front of the proxy for
Claude Code. The only difference allowed is Host in reverse mode (see expected_upstream_headers).
"""

from __future__ import annotations

import json
import threading
import uuid

import httpx
import pytest

from tests.conftest import EVAL_DIR
from tests.support import rawhttp
from tests.support.claude_code import run_claude
from tests.support.relay import Relay

from .conftest import Route, expected_upstream_headers

# Valid JSON a re-serialiser would change: spacing, key order, escapes, number spelling, a duplicate key
QUIRKY_ANTHROPIC = (b'{ "max_tokens" :64,"model":"claude-opus-4-8",\n  "messages":[{"content":"NONCE caf\\u00e9 \\ud83d\\ude00 \xe2\x82\xac",'
                    b'"role":"user"}],"temperature":1.0e0,"top_k":  5, "metadata":{"user_id":"u","user_id":"u2"} }\n')
QUIRKY_CHAT = (b'{"messages":[{"role":"user","content":"NONCE tab\\there"}], "model":"gpt-4o","n":1,'
               b'"stream":false ,"temperature":0.50}')
QUIRKY_RESPONSES = b'{"input":[{"role":"user","content":[{"type":"input_text","text":"NONCE x\\/y"}]}],"model":"gpt-4o","store":false}'


def _fresh(body: bytes) -> bytes:
    """A new conversation each time (the active profile's memory would recall an identical earlier one)."""
    return body.replace(b"NONCE", uuid.uuid4().hex.encode())


def _fresh_key(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A key of its own per request: a new tenant, whose memory (active profile) holds nothing to inject."""
    return [(k, v.replace("KEY", uuid.uuid4().hex)) for k, v in headers]


def headers_for(route: Route, openai_host: bool, extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [("Host", route.host_header(openai_host)), ("User-Agent", "e2e-raw/1"), ("X-Dup", "one"), *extra,
            ("X-Dup", "two"), ("Accept", "application/json"), ("Connection", "keep-alive"),
            ("Content-Type", "application/json")]


CASES = {
    "anthropic": ("/v1/messages?beta=true", False, QUIRKY_ANTHROPIC,
                  [("x-api-key", "sk-ant-KEY"), ("anthropic-version", "2023-06-01"),
                   ("anthropic-beta", "context-management-2025-06-27,prompt-caching-scope-2026-01-05")]),
    "chat": ("/v1/chat/completions", True, QUIRKY_CHAT, [("Authorization", "Bearer sk-proj-KEY")]),
    "responses": ("/v1/responses", True, QUIRKY_RESPONSES, [("authorization", "Bearer sk-proj-KEY")]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_unchanged_request_is_byte_identical(route: Route, standin, case):
    """Any profile: when nothing changes the request, the original bytes go upstream (no re-serialisation)."""
    path, openai_host, body, extra = CASES[case]
    body = _fresh(body)
    sent = headers_for(route, openai_host, _fresh_key(extra)) + [("Content-Length", str(len(body)))]
    since = route.proxy.mark()
    resp = rawhttp.exchange(route.socket(openai_host), rawhttp.build_request("POST", path, sent, body))
    assert resp.status == 200, resp.body
    [rec] = standin.requests()
    assert rec.path == path
    assert rec.body == body
    assert rec.headers == expected_upstream_headers(route, sent, standin)
    fwd = route.proxy.wait_events(lambda e: e["type"] == "forward", 1, since=since)
    assert fwd and fwd[0]["data"]["changed"] is False and fwd[0]["data"]["bytes_out"] == len(body)


@pytest.mark.parametrize("turn", ["turn1", "turn2"])
def test_captured_claude_code_request_unchanged(observe_route: Route, standin, turn):
    """The real Claude Code 2.1.197 bodies and headers from ../shared, sent byte for byte."""
    captured = json.loads((EVAL_DIR / "requests" / "claude-code-2.1.197-headers.json").read_text())
    body = (EVAL_DIR / "requests" / f"claude-code-2.1.197-{turn}.json").read_bytes()
    sent = [(k, observe_route.host_header() if k == "Host" else str(len(body)) if k == "Content-Length" else v)
            for k, v in captured["headers"].items()]
    resp = rawhttp.exchange(observe_route.socket(), rawhttp.build_request("POST", captured["path"], sent, body))
    assert resp.status == 200
    [rec] = standin.requests()
    assert rec.body == body
    assert rec.headers == expected_upstream_headers(observe_route, sent, standin)


class _Capture:
    """httpx2 request hook: the request exactly as the SDK hands it to the transport."""

    def __init__(self) -> None:
        self.sent: list[tuple[list[tuple[str, str]], bytes]] = []
        self._lock = threading.Lock()

    def __call__(self, request) -> None:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        with self._lock:
            self.sent.append((headers, request.content))


def _sdk_calls(route: Route, hooks: dict) -> None:
    a = route.anthropic(event_hooks=hooks)
    msgs = [{"role": "user", "content": "héllo ☃"}]
    a.messages.create(model="claude-opus-4-8", max_tokens=32, messages=msgs, system=[{"type": "text", "text": "be brief",
                                                                                       "cache_control": {"type": "ephemeral"}}])
    with a.messages.stream(model="claude-opus-4-8", max_tokens=32, messages=msgs) as s:
        s.get_final_message()
    o = route.openai(event_hooks=hooks)
    o.chat.completions.create(model="gpt-4o", messages=msgs, user="someone")
    list(o.chat.completions.create(model="gpt-4o", messages=msgs, stream=True))
    o.responses.create(model="gpt-4o", input="hi", instructions="be brief")


def test_sdk_requests_unchanged(observe_route: Route, standin):
    cap = _Capture()
    _sdk_calls(observe_route, {"request": [cap]})
    recs = standin.requests()
    assert len(cap.sent) == len(recs) == 5
    for (headers, body), rec in zip(cap.sent, recs):
        assert rec.body == body
        assert rec.headers == expected_upstream_headers(observe_route, headers, standin)


@pytest.mark.claude_code
def test_claude_code_requests_unchanged(observe_reverse, standin, claude_bin, tmp_path):
    """Claude Code -> recording relay -> observe-only proxy (reverse mode) -> stand-in: every request
    Claude Code put on the wire reaches the upstream with the same bytes and headers."""
    route = Route(observe_reverse, False, "observe-reverse")
    with Relay(("127.0.0.1", observe_reverse.port)) as relay:
        result = run_claude(claude_bin, tmp_path, {"ANTHROPIC_BASE_URL": relay.url})
        assert result.returncode == 0, result.stderr
        wire = relay.requests()
    recs = standin.requests()
    assert len([r for r in recs if r.route == "/v1/messages"]) >= 2
    assert [(w.method, w.target) for w in wire] == [(r.method, r.path) for r in recs]
    for w, r in zip(wire, recs):
        assert r.body == w.body, f"{w.method} {w.target}: body changed"
        assert r.headers == expected_upstream_headers(route, w.headers, standin), f"{w.method} {w.target}: headers changed"


def test_mitmdump_prints_no_flow_line_by_default(observe_reverse, standin):
    """mitmdump's per-flow lines are off by default (addons/outputguard.py): a request through the proxy
    adds none to its output."""
    start = len(observe_reverse.stdout_text())
    since = observe_reverse.mark()
    with httpx.Client(trust_env=False, timeout=60) as c:
        r = c.post(observe_reverse.url + "/v1/messages", json={"model": "claude-sonnet-4-5", "max_tokens": 20,
                                                               "messages": [{"role": "user", "content": "hi"}]},
                   headers={"x-api-key": "sk-ant-lines", "anthropic-version": "2023-06-01"})
    assert r.status_code == 200
    assert observe_reverse.wait_events(lambda e: e["type"] == "response", since=since)
    out = observe_reverse.stdout_text()[start:]
    assert "/v1/messages" not in out and "<< 200" not in out, out[-2000:]
