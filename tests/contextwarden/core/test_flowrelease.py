"""contextwarden.core.flowrelease: a stream mitmproxy's HTTP layer drops lets go of its flow, and
mitmproxy's type check without reference cycles gives the same verdicts while a flow rebuilt from its
state (the engine's mirror of every request) is freed by reference counting instead of waiting, with its
body, for a full collection."""

from __future__ import annotations

import asyncio
import copy
import gc
import typing
import weakref

import pytest
from mitmproxy import http
from mitmproxy.options import Options
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import HttpLayer, HTTPMode
from mitmproxy.test import tflow, tutils
from mitmproxy.utils import typecheck

from contextwarden.core import flowrelease


def _flow() -> http.HTTPFlow:
    """A finished flow holding a 1 MB request body (tflow.tflow's flows are cycles of their own)."""
    flow = http.HTTPFlow(tflow.tclient_conn(), tflow.tserver_conn())
    flow.request = tutils.treq(content=bytes(1_000_000))
    flow.response = tutils.tresp()
    return flow


class _Stream:
    def __init__(self, flow) -> None:
        self.flow = flow
        self.state = self.done  # a cycle, as mitmproxy's HttpStream: only a full collection frees it

    def done(self) -> None:
        pass


def test_the_http_layer_gets_the_releasing_streams():
    assert flowrelease.install() and flowrelease.install()  # (once per process; again is a no-op)
    layer = HttpLayer(Context(tflow.tclient_conn(), Options()), HTTPMode.regular)
    assert type(layer.streams) is flowrelease._Streams


async def test_a_dropped_stream_lets_go_of_its_flow_once_the_event_is_handled():
    was = gc.isenabled()
    gc.disable()
    try:
        flow = _flow()
        ref = weakref.ref(flow)
        streams = flowrelease._Streams()
        streams[1] = _Stream(flow)
        del flow
        # (making a flow raises and catches TypeErrors in mitmproxy's type checks: their tracebacks keep
        # the frames that made it, and its locals, until a collection; the proxy's young collections
        # free them within ms. This one also moves the live stream to the oldest generation, where
        # nothing but a full collection would free it, as under load)
        gc.collect()
        stream = streams.pop(1, None)
        assert stream.flow is not None  # the stream's last commands may still come: not cut yet
        del stream
        assert streams.pop(2, None) is None  # (a stream dropped twice, or never there)
        await asyncio.sleep(0)  # one turn of the loop (its callbacks run), not a wait
        assert ref() is None  # freed by reference counting, the stream still cyclic garbage
    finally:
        if was:
            gc.enable()


def test_without_an_event_loop_nothing_is_cut():
    flow = _flow()
    streams = flowrelease._Streams({1: _Stream(flow)})
    assert streams.pop(1).flow is flow


CASES = [
    ("a", None, typing.Optional[int]), ("a", 3, typing.Optional[int]), ("a", "x", typing.Optional[int]),
    ("a", 1.0, int | None), ("a", 1, float | None), ("a", True, str | bytes | None),
    ("t", (1, "x"), tuple[int, str]), ("t", (1, None), tuple[int, str | None]), ("t", (1, 2), tuple[int, str | None]),
    ("t", (1,), tuple[int, str]), ("s", ["a", None], typing.Sequence[str | None]), ("s", ["a", 2], typing.Sequence[str | None]),
    ("b", b"x", bytes | None), ("h", None, http.Headers | None), ("h", http.Headers(), http.Headers | None),
    ("x", object(), typing.Any), ("f", 2, float),
]


def _verdict(fn, case) -> str:
    try:
        fn(*case)
        return "ok"
    except TypeError as e:
        return str(e)


def _original():
    return flowrelease._ORIGINAL_CHECK or typecheck.check_option_type


def _garbage_of(make) -> list:
    """What a full collection finds unreachable after ``make()``'s result is dropped."""
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        obj = make()
        del obj
        gc.collect()
        return list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was:
            gc.enable()


def test_the_same_verdicts_and_messages_as_mitmproxys_own_check():
    original = _original()
    assert flowrelease.install()
    assert typecheck.check_option_type is not original
    assert [_verdict(typecheck.check_option_type, c) for c in CASES] == [_verdict(original, c) for c in CASES]
    assert flowrelease.install()  # twice: still the one wrapper around mitmproxy's
    assert flowrelease._ORIGINAL_CHECK is original


def test_a_flow_rebuilt_from_its_state_is_freed_without_a_collection():
    assert flowrelease.install()
    state = tflow.tflow(resp=True).get_state()
    state["request"]["content"] = b"x" * 200_000  # the engine's mirror holds the whole request body
    garbage = _garbage_of(lambda: http.HTTPFlow.from_state(copy.deepcopy(state)))
    assert garbage == []


def test_mitmproxys_own_check_leaves_a_cycle_holding_the_object_being_built():
    """What the fix is for (and that the test above could fail): with the original check, a Response
    whose optional fields are None is cyclic garbage once dropped."""
    original = _original()
    fixed = typecheck.check_option_type
    typecheck.check_option_type = original
    try:
        resp_state = tflow.tflow(resp=True).response.get_state()
        garbage = _garbage_of(lambda: http.Response.from_state(copy.deepcopy(resp_state)))
    finally:
        typecheck.check_option_type = fixed
    kinds = {type(o).__name__ for o in garbage}
    assert {"TypeError", "traceback", "frame"} <= kinds
    assert "Response" in kinds or "ResponseData" in kinds


@pytest.mark.parametrize("case", [c for c in CASES if _verdict(_original(), c) == "ok"])
def test_a_check_that_passes_leaves_no_garbage(case):
    """Valid values (every flow mitmproxy builds): no cycle. A check that fails outside a union still
    raises mitmproxy's own exception, cycle and all (an error: rare, and reported as before)."""
    assert flowrelease.install()

    def check():
        _verdict(typecheck.check_option_type, case)

    assert not any(type(o).__name__ == "TypeError" for o in _garbage_of(check))
