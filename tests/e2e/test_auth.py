"""Credentials pass through unchanged and in order, and are never written anywhere by the proxy."""

from __future__ import annotations

import json
import uuid

from tests.support import rawhttp

from .conftest import Route, expected_upstream_headers


def _anthropic_body(text: str) -> bytes:
    return json.dumps({"model": "claude-opus-4-8", "max_tokens": 16, "stream": True,
                       "messages": [{"role": "user", "content": text}]}).encode()


def test_credentials_forwarded_in_order_and_never_stored(route: Route, standin):
    n = uuid.uuid4().hex
    api_key, oauth, openai_key = f"sk-ant-api03-{n}-AA", f"sk-ant-oat01-{n}-BB", f"sk-proj-{n}-CC"
    betas = "claude-code-20250219,context-1m-2025-08-07,interleaved-thinking-2025-05-14"
    requests = [
        (False, "/v1/messages?beta=true", [("x-api-key", api_key), ("anthropic-version", "2023-06-01"),
                                           ("anthropic-beta", betas), ("Content-Type", "application/json")]),
        (False, "/v1/messages", [("Authorization", f"Bearer {oauth}"), ("anthropic-beta", "oauth-2025-04-20," + betas),
                                 ("anthropic-version", "2023-06-01"), ("Content-Type", "application/json")]),
        (True, "/v1/chat/completions", [("Content-Type", "application/json"), ("Authorization", f"Bearer {openai_key}"),
                                        ("OpenAI-Organization", f"org-{n}"), ("OpenAI-Project", f"proj_{n}")]),
    ]
    since = route.proxy.mark()
    for openai_host, path, auth in requests:
        body = (json.dumps({"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": f"auth {n}"}]}).encode()
                if openai_host else _anthropic_body(f"auth {n}"))
        headers = [("Host", route.host_header(openai_host)), ("User-Agent", "e2e-auth"), *auth,
                   ("Content-Length", str(len(body)))]
        resp = rawhttp.exchange(route.socket(openai_host), rawhttp.build_request("POST", path, headers, body))
        assert resp.status == 200
        rec = standin.requests()[-1]
        assert rec.headers == expected_upstream_headers(route, headers, standin)
        assert rec.body == body

    # the SDK's way too
    route.anthropic(api_key=api_key).messages.create(model="claude-opus-4-8", max_tokens=8,
                                                     messages=[{"role": "user", "content": f"sdk {n}"}])
    last = standin.requests()[-1]
    # this SDK generation sends the API key as a bearer token
    assert api_key in (last.header("x-api-key"), (last.header("authorization") or "").removeprefix("Bearer "))

    # let everything the proxy does with these requests happen (events, turn hooks, memory ingestion)
    evs = route.proxy.wait_events(lambda e: e["type"] == "turn", 4, since=since, timeout=20)
    assert len(evs) == 4
    reqs = route.proxy.events("request", since=since)
    tenants = [e["data"]["tenant"] for e in reqs]
    assert len(set(tenants)) == 3 and all(t.startswith("t-") for t in tenants)  # one per credential, salted hashes
    for e in reqs:
        for k, v in e["data"]["headers"]:
            if k.lower() in ("x-api-key", "authorization"):
                assert v == "[REDACTED:header]"
    route.proxy.mark()  # flush
    for secret in (api_key, oauth, openai_key, n + "-AA", n + "-BB", n + "-CC"):
        assert not route.proxy.leaks(secret), f"credential {secret[:14]}... found in {route.proxy.leaks(secret)}"


def test_consumed_headers_removed(route: Route, standin):
    """Headers addressed to the proxy are read, then removed before the request goes upstream."""
    sid = f"e2e-session-{uuid.uuid4().hex[:8]}"
    body = _anthropic_body(f"consumed {sid}")
    headers = [("Host", route.host_header()), ("Content-Type", "application/json"), ("X-Contextwarden-Session", sid),
               ("x-api-key", f"sk-ant-{uuid.uuid4().hex}"), ("x-contextwarden-agent", "reviewer"),
               ("Content-Length", str(len(body)))]
    since = route.proxy.mark()
    resp = rawhttp.exchange(route.socket(), rawhttp.build_request("POST", "/v1/messages", headers, body))
    assert resp.status == 200
    [rec] = standin.requests()
    kept = [h for h in headers if not h[0].lower().startswith("x-contextwarden-")]
    assert rec.headers == expected_upstream_headers(route, kept, standin)
    assert rec.body == body
    [ev] = route.proxy.wait_events(lambda e: e["type"] == "request", since=since)
    assert (ev["session"], ev["data"]["session_source"]) == (sid, "x-contextwarden-session")
