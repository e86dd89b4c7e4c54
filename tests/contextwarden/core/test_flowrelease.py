"""contextwarden.core.flowrelease: a stream mitmproxy's HTTP layer drops lets go of its flow."""

from __future__ import annotations

import asyncio
import gc
import weakref

from mitmproxy import http
from mitmproxy.options import Options
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import HttpLayer, HTTPMode
from mitmproxy.test import tflow, tutils

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
