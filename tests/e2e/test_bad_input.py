"""Bad input is forwarded unchanged, without a crash, and each case leaves an event."""

from __future__ import annotations

import base64
import gzip
import json
import os
import uuid

import pytest
import zstandard

from tests.support import rawhttp

from .conftest import Route, expected_upstream_headers

# Valid bodies carry a fresh nonce: a new conversation each time, so the active profile's memory stage
# has nothing of an earlier test's identical conversation to inject.
VALID = b'{"model": "claude-opus-4-8", "max_tokens": 16, "messages": [{"role": "user", "content": "hello NONCE"}]}'
UNKNOWN = json.dumps({
    "model": "claude-opus-4-8", "max_tokens": 16, "future_field": {"x": [1, 2]},
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi NONCE"}, {"type": "hologram", "payload": {"z": 1}}]},
        {"role": "narrator", "content": "an unknown role"},
        {"role": "assistant", "content": [{"type": "quantum_thought", "data": "..."}]},
        {"role": "user", "content": "continue"},
    ]}).encode()


def _twenty_mb() -> bytes:
    # The realistic way a request gets this big: an image, base64 in an image block
    data = base64.b64encode(os.urandom(15_000_000)).decode()
    return json.dumps({"model": "claude-opus-4-8", "max_tokens": 16, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
        {"type": "text", "text": "what is in this image? NONCE"}]}]}).encode()


# name: (body or a function of the nonce, content-type, content-encoding,
#        the event it must leave: "error" (not parsed) or "request")
CASES = {
    "malformed-json": (b'{"model": "claude-opus-4-8", "messages": [{"role": "user", "content": "x"', "application/json", None, "error"),
    "non-utf8": (b'{"model": "claude-\xff\xfe", "max_tokens": 5, "messages": [{"role": "user", "content": "\xc3\x28"}]}',
                 "application/json", None, "error"),
    "empty": (b"", "application/json", None, "error"),
    "wrong-content-type": (VALID, "text/plain; charset=utf-8", None, "error"),
    "json-not-object": (b'[{"role": "user", "content": "x"}]', "application/json", None, "error"),
    "schema-mismatch": (b'{"model": 5, "messages": "not a list", "max_tokens": "many"}', "application/json", None, "error"),
    "bad-gzip": (b"this is not gzip at all", "application/json", "gzip", "error"),
    "unknown-roles-and-blocks": (UNKNOWN, "application/json", None, "request"),
    "gzip": (lambda b: gzip.compress(b), "application/json", "gzip", "request"),
    "zstd": (lambda b: zstandard.ZstdCompressor().compress(b), "application/json", "zstd", "request"),
    "20mb": ("20mb", "application/json", None, "request"),
}
_big: list[bytes] = []


def _case_body(name: str) -> bytes:
    body = CASES[name][0]
    nonce = uuid.uuid4().hex.encode()
    if body == "20mb":
        if not _big:
            _big.append(_twenty_mb())
        return _big[0].replace(b"NONCE", nonce)
    if callable(body):
        return body(VALID.replace(b"NONCE", nonce))
    return body.replace(b"NONCE", nonce)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_forwarded_unchanged(route: Route, standin, name):
    _, ctype, encoding, expect = CASES[name]
    body = _case_body(name)
    tag = f"case={name}-{uuid.uuid4().hex[:8]}"
    path = f"/v1/messages?{tag}"
    # a key of its own: a new tenant, whose memory (active profile) holds nothing to inject
    headers = [("Host", route.host_header()), ("x-api-key", f"sk-ant-bad-{uuid.uuid4().hex}"), ("anthropic-version", "2023-06-01"),
               ("Content-Type", ctype)]
    if encoding:
        headers.append(("Content-Encoding", encoding))
    headers.append(("Content-Length", str(len(body))))
    since = route.proxy.mark()

    resp = rawhttp.exchange(route.socket(), rawhttp.build_request("POST", path, headers, body))

    [rec] = standin.requests()
    assert rec.body == body, "the upstream did not get the client's bytes"
    assert rec.headers == expected_upstream_headers(route, headers, standin)
    assert (resp.status, resp.body) == (rec.status, bytes(rec.response_body)), "the client did not get the upstream's answer"
    if expect == "error":
        evs = route.proxy.wait_events(lambda e: e["type"] == "error" and tag in (e["data"].get("path") or ""), since=since)
        assert evs, route.proxy.events(since=since)
        assert evs[0]["data"]["action"] == "forwarded unchanged"
        assert not route.proxy.events("request", since=since, wait=0, path=path)
    else:
        flow = route.proxy.flow_id(tag, since=since, timeout=60)
        assert flow, route.proxy.events(since=since)
        [fwd] = route.proxy.flow_events(flow, "forward", timeout=60)
        assert fwd["data"]["changed"] is False
        assert resp.status == 200
    assert route.proxy.alive


def test_still_serving_after_bad_input(route: Route, standin):
    for name in ("malformed-json", "non-utf8", "empty", "bad-gzip"):
        _, ctype, enc, _ = CASES[name]
        body = _case_body(name)
        headers = [("Host", route.host_header()), ("Content-Type", ctype)] + ([("Content-Encoding", enc)] if enc else [])
        rawhttp.exchange(route.socket(), rawhttp.build_request("POST", "/v1/messages", headers, body))
    resp = rawhttp.exchange(route.socket(), rawhttp.build_request(
        "POST", "/v1/messages", [("Host", route.host_header()), ("Content-Type", "application/json")],
        VALID.replace(b"NONCE", uuid.uuid4().hex.encode())))
    assert resp.status == 200
    assert json.loads(resp.body)["content"][0]["text"] == standin.text
    assert route.proxy.alive
