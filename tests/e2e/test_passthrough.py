"""Requests that are not LLM calls pass through untouched and unparsed: no ``request`` event."""

from __future__ import annotations

import json
import uuid

from tests.support import rawhttp

from .conftest import Route, expected_upstream_headers

COUNT = json.dumps({"model": "claude-opus-4-8", "messages": [{"role": "user", "content": "count me"}]}).encode()


def test_other_paths_untouched(route: Route, standin):
    tag = uuid.uuid4().hex[:12]
    host = route.host_header()
    cases = [
        ("POST", f"/v1/messages/count_tokens?beta=true&t={tag}", [("Content-Type", "application/json")], COUNT),
        ("GET", f"/v1/models?t={tag}", [], b""),
        ("GET", f"/api/claude_code/settings?t={tag}", [("Accept", "application/json")], b""),
        ("POST", f"/v1/messages/batches?t={tag}", [("Content-Type", "application/json")], b'{"requests": []}'),
        ("GET", f"/v1/messages?t={tag}", [], b""),  # not a POST
    ]
    since = route.proxy.mark()
    for method, path, extra, body in cases:
        headers = [("Host", host), ("x-api-key", "sk-ant-passthrough"), *extra]
        if body:
            headers.append(("Content-Length", str(len(body))))
        resp = rawhttp.exchange(route.socket(), rawhttp.build_request(method, path, headers, body, content_length=False))
        rec = standin.requests()[-1]
        assert (rec.method, rec.path, rec.body) == (method, path, body)
        assert rec.headers == expected_upstream_headers(route, headers, standin)
        assert (resp.status, resp.body) == (rec.status, bytes(rec.response_body))
    assert json.loads(standin.requests()[0].response_body)["input_tokens"] > 0

    # a real call afterwards: its request event proves the log is being written, and is the only one
    msg = json.dumps({"model": "claude-opus-4-8", "max_tokens": 8, "messages": [{"role": "user", "content": tag}]}).encode()
    rawhttp.exchange(route.socket(), rawhttp.build_request(
        "POST", f"/v1/messages?t={tag}", [("Host", host), ("Content-Type", "application/json")], msg))
    assert route.proxy.flow_id(f"/v1/messages?t={tag}", since=since)
    reqs = [e for e in route.proxy.events("request", since=since) if tag in e["data"]["path"]]
    assert [e["data"]["path"] for e in reqs] == [f"/v1/messages?t={tag}"]
    # nothing else was looked at: every flow with events since the mark is either older or the real call
    older = {e["flow_id"] for e in route.proxy.events()[:since]}
    flows = {e["flow_id"] for e in route.proxy.events(since=since) if e["flow_id"]} - older
    assert flows == {reqs[0]["flow_id"]}
