"""The observer (addons/observer.py): a streamed answer is relayed chunk by chunk unchanged, only held on
the event loop, and read once it has ended, on the turn pool, into the same turn a live reading gives."""

from __future__ import annotations

import threading

from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.test import tutils

from contextwarden.core.boundedpool import BoundedExecutor
from contextwarden.models.base import ApiKind
from contextwarden.wire.streams.tap import ResponseTap
from tests.addons.test_interceptor import (  # noqa: F401
    anthropic_flow,
    body,
    harness_factory,  # noqa: F401
)
from tests.plugins.test_plugins import SSE  # an answer whose text holds an 'é'
from tests.support.wait import wait_until

CRLF_SSE = SSE.replace(b"\n", b"\r\n")


def live_summary(data: bytes, error: str | None = None) -> dict:
    """The turn's summary as a reader of every chunk as it comes sees it."""
    tap = ResponseTap(ApiKind.ANTHROPIC, "text/event-stream", None, None, live=True)
    for i in range(len(data)):
        tap.feed(data[i:i + 1])
    return tap.finish(error).summary()


def wait_for(h, kind: str, flow_id: str, timeout: float = 15.0) -> list:
    return wait_until(lambda: [e for e in h.events(kind) if e.flow_id == flow_id], timeout, interval=0.02)


async def stream_through(h, data: bytes, cuts: list[int]) -> tuple:
    """A flow through the interceptor whose answer ``data`` arrives cut at ``cuts``: (flow, bytes relayed)."""
    f = await h.send(anthropic_flow(body(stream=True)))
    f.response = tutils.tresp(status_code=200, content=b"", headers=http.Headers([(b"content-type", b"text/event-stream")]))
    h.observer.responseheaders(f)
    tap = f.metadata["contextwarden"].tap
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < len(data)), len(data)]
    received = b""
    for a, b in zip(bounds, bounds[1:]):
        received += f.response.stream(data[a:b])
        assert tap.events == 0  # held, not read, on the event loop
    received += f.response.stream(b"")
    return f, received


def cuts_inside_characters_and_blank_lines(data: bytes) -> list[int]:
    inside_char = [i for i, b in enumerate(data) if 0x80 <= b < 0xC0]
    inside_blank = [i + 1 for i in range(len(data) - 1) if data[i:i + 2] in (b"\n\n", b"\r\n")]
    return inside_char + inside_blank


async def test_a_stream_is_relayed_unchanged_and_read_off_the_loop_into_the_same_turn(harness_factory):
    h = harness_factory()
    for data in (SSE, CRLF_SSE):
        f, received = await stream_through(h, data, cuts_inside_characters_and_blank_lines(data))
        assert received == data  # byte for byte, chunk by chunk
        await h.observer.response(f)
        [turn] = wait_for(h, "turn", f.id)
        [resp] = wait_for(h, "response", f.id)
        expected = live_summary(data)
        assert expected["complete"] and expected["text_chars"] == 4  # "Hi é"
        assert {k: turn.data[k] for k in expected} == expected
        assert {k: resp.data[k] for k in expected} == expected and resp.data["status"] == 200
        assert "reader_failed" not in resp.data


async def test_a_stream_that_breaks_reports_what_arrived(harness_factory):
    h = harness_factory()
    cut = SSE.index(b"\xc3\xa9") + 1  # the connection breaks inside the 'é'
    f, received = await stream_through(h, SSE[:cut], list(range(5, cut, 5)))
    assert received == SSE[:cut]
    f.error = mflow.Error("peer closed connection without sending complete message body")
    await h.observer.error(f)
    [resp] = wait_for(h, "response", f.id)
    expected = live_summary(SSE[:cut], str(f.error))
    assert not expected["complete"] and expected["error"]["type"] == "connection"
    assert {k: resp.data[k] for k in expected} == expected  # "error": the turn's, naming the connection
    assert resp.data["error"]["message"] == str(f.error)
    await h.observer.response(f)  # mitmproxy calls one or the other; a second call reports nothing
    assert not wait_until(lambda: len(wait_for(h, "response", f.id)) > 1, 0.1)
    assert len(wait_for(h, "response", f.id)) == 1


async def test_a_turn_dropped_by_a_full_turn_pool_still_reports_its_response(harness_factory):
    h = harness_factory()
    rt = h.runtime
    # the runtime's own job once memory is ready (a collection, rt._settle_gc_when_memory_is_ready) would
    # land in this one-place pool whenever the model finished loading and drop one of the flows' jobs
    # instead (one CI run: the second's; a local run: neither the first's): not in this test
    rt._gc_settled_memory = True
    pool, rt.turn_pool = rt.turn_pool, BoundedExecutor(1, 1, "cw-test-turn")
    gate = threading.Event()
    try:
        rt.turn_pool.submit(gate.wait, 10)  # the only worker is busy
        assert wait_until(lambda: not rt.turn_pool.pending, 10, interval=0.01)
        first, _ = await stream_through(h, SSE, [100])
        await h.observer.response(first)  # waits in the pool
        second, _ = await stream_through(h, SSE, [100])
        await h.observer.response(second)  # the pool holds one: the first's work is dropped
        [resp] = wait_for(h, "response", first.id, timeout=1)  # read and reported at once all the same
        assert {k: resp.data[k] for k in live_summary(SSE)} == live_summary(SSE)
        assert not wait_for(h, "response", second.id, timeout=0.2)  # still waiting for the worker
    finally:
        gate.set()
        rt.turn_pool.shutdown(wait=True)
        rt.turn_pool = pool
    assert wait_for(h, "turn", second.id) and wait_for(h, "response", second.id)
    assert not wait_for(h, "turn", first.id, timeout=0.2)  # its completion was the part dropped
