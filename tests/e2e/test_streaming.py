"""Responses flow through unbuffered and unchanged, and are read on the side.

The stand-in writes SSE events 300 ms apart and records when it wrote each one; the client records
when each arrived. Both are ``time.time()`` on this machine, so they compare directly.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.support import rawhttp
from tests.support.upstream import decode_content

from .conftest import Route, route_for

DELAY = 0.3
BODY = json.dumps({"model": "claude-opus-4-8", "max_tokens": 64, "stream": True,
                   "messages": [{"role": "user", "content": "stream please"}]}).encode()


def _post(route: Route, path: str, body: bytes, extra: list[tuple[str, str]] = (), openai_host: bool = False):
    headers = [("Host", route.host_header(openai_host)), ("Content-Type", "application/json"),
               ("x-api-key", "sk-ant-streaming"), *extra]
    return rawhttp.exchange(route.socket(openai_host), rawhttp.build_request("POST", path, headers, body))


def _event_arrivals(arrivals: list[tuple[float, bytes]]) -> list[float]:
    """When the client had each whole SSE event (an event ends with a blank line)."""
    times, seen = [], 0
    tail = b""
    for t, data in arrivals:
        buf = tail + data
        n = buf.count(b"\n\n")
        times += [t] * (n - seen) if n > seen else []
        seen = n
        tail = buf
    return times


def test_no_buffering_raw(route: Route, standin):
    """Every event reaches the client before the upstream writes the next one."""
    standin.sse_delay = DELAY
    resp = _post(route, "/v1/messages", BODY)
    assert resp.status == 200 and resp.complete
    [rec] = standin.requests("/v1/messages")
    got = _event_arrivals(resp.arrivals)
    assert len(got) == len(rec.event_times) >= 8
    late = [(i, round(got[i] - rec.event_times[i + 1], 3)) for i in range(len(got) - 1) if got[i] >= rec.event_times[i + 1]]
    assert got[0] < rec.event_times[1], f"the first event arrived {got[0] - rec.event_times[1]:.3f} s after the second was sent"
    # every other one too; one straggler is tolerated (a collector pause on a loaded machine is not buffering)
    assert len(late) <= 1, f"events that arrived only after the upstream had sent the next one (index, seconds late): {late}"
    # and the client did not get them in one lump at the end
    assert got[-1] - got[0] >= DELAY * (len(got) - 2)


@pytest.mark.parametrize("label,sdk", [("active-regular", "anthropic"), ("observe-reverse", "anthropic"),
                                       ("active-reverse", "chat"), ("observe-regular", "responses")])
def test_no_buffering_sdk(request, standin, label, sdk):
    """The SDK yields the first event before the upstream sends the second (then hangs up early)."""
    route = route_for(request, label)
    msgs = [{"role": "user", "content": "stream please"}]

    def open_stream():
        if sdk == "anthropic":
            return route.anthropic().messages.create(model="claude-opus-4-8", max_tokens=64, messages=msgs, stream=True)
        if sdk == "chat":
            return route.openai().chat.completions.create(model="gpt-4o", messages=msgs, stream=True)
        return route.openai().responses.create(model="gpt-4o", input="stream please", stream=True)

    # The SDKs build their event models on first use (the openai SDK's Responses events: ~0.15 s for the
    # first, seconds for response.completed): a cold client would measure itself, not the proxy.
    with open_stream() as warm:
        assert list(warm)
    standin.reset()
    standin.sse_delay = DELAY
    stream = open_stream()
    with stream:
        first = next(iter(stream))
        t_first = time.time()
    [rec] = standin.requests()
    assert getattr(first, "type", None) in ("message_start", "response.created", None)
    standin.wait_for(1)  # the upstream noticed the hang-up: nothing of this flow spills into the next test
    assert len(rec.event_times) >= 1
    if len(rec.event_times) >= 2:
        assert t_first < rec.event_times[1]
    else:  # the client hung up before the upstream got to its second event: certainly not buffered
        assert t_first < rec.event_times[0] + DELAY


KINDS = {
    # name: (path, body, x-standin-mode, openai host, streamed)
    "anthropic-json": ("/v1/messages", {"stream": False}, "", False, False),
    "anthropic-sse": ("/v1/messages?beta=true", {"stream": True}, "", False, True),
    "anthropic-sse-gzip": ("/v1/messages", {"stream": True}, "gzip", False, True),
    "anthropic-json-zstd": ("/v1/messages", {"stream": False}, "zstd", False, False),
    "chat-sse-zstd": ("/v1/chat/completions", {"stream": True, "stream_options": {"include_usage": True}}, "zstd", True, True),
    "chat-json-gzip": ("/v1/chat/completions", {"stream": False}, "gzip", True, False),
    "responses-sse": ("/v1/responses", {"stream": True}, "", True, True),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_response_bytes_unchanged_and_read(route: Route, standin, kind):
    """The client gets the upstream's status, headers and (still encoded) body bytes exactly; the proxy's
    side reader still assembles the turn and reports the provider's usage."""
    path, extra, mode, openai_host, streamed = KINDS[kind]
    tag = f"e2e={kind}-{uuid.uuid4().hex[:8]}"
    path += ("&" if "?" in path else "?") + tag
    if path.startswith("/v1/responses"):
        base = {"model": "gpt-4o", "input": "hi"}
    else:
        base = {"model": "claude-opus-4-8", "max_tokens": 64, "messages": [{"role": "user", "content": f"hi {kind}"}]}
    since = route.proxy.mark()
    resp = _post(route, path, json.dumps({**base, **extra}).encode(),
                 [("x-standin-mode", mode)] if mode else [], openai_host=openai_host)
    recs = standin.requests()
    assert len(recs) == 1, [(r.method, r.path, r.headers, r.body[:200]) for r in recs]
    rec = recs[0]
    assert (resp.status, resp.complete) == (200, True)
    assert resp.body == bytes(rec.response_body)
    assert resp.upstream_headers == rec.response_headers
    assert float(resp.headers[-1][1]) >= 0 and resp.headers[-1][0].lower() == "x-contextwarden-overhead-ms"
    if mode:
        assert resp.header("content-encoding") == mode

    flow = route.proxy.flow_id(tag, since=since)
    assert flow, route.proxy.events(since=since)
    [ev] = route.proxy.flow_events(flow, "response")
    d = ev["data"]
    assert (d["status"], d["streamed"], d["error"]) == (200, streamed, None)
    sent = json.loads(_decoded(rec))
    usage = _provider_usage(sent)
    assert d["usage"] is not None, d
    assert d["usage"]["output_tokens"] == usage["output_tokens"]
    assert d["stop_reason"] in ("end_turn", "stop", "completed")


def _decoded(rec) -> bytes:
    raw = decode_content(bytes(rec.response_body), next((v for k, v in rec.response_headers if k.lower() == "content-encoding"), None))
    if not raw.lstrip().startswith((b"event:", b"data:")):
        return raw
    # the last SSE event that carries usage: Anthropic's message_delta, the chat usage chunk, response.completed
    last = None
    for block in raw.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: ") and line[6:] != b"[DONE]":
                d = json.loads(line[6:])
                if d.get("usage") or (d.get("response") or {}).get("usage"):
                    last = d
    return json.dumps(last.get("response", last)).encode()


def _provider_usage(obj: dict) -> dict:
    u = obj["usage"]
    return {"output_tokens": u.get("output_tokens", u.get("completion_tokens"))}
