"""mitmproxy's finished flows freed by reference counting, not by a full garbage collection.

mitmproxy's ``HttpStream`` layer (one per request) is a reference cycle (its state is its own bound
methods) that holds the request's ``flow``, and so its bodies: once the HTTP layer drops a finished
stream, only a full collection frees the flow (under load: ~15 MB/s of garbage, and a pause of
0.1-0.4 s each time).

:func:`install` makes the HTTP layer's ``streams`` a dict that, when a stream is dropped, cuts the
stream's reference to its flow once the event being handled is done (``call_soon``: the stream's last
commands, sent right after ``DropStream``, never read the flow). The flow is not part of a cycle of
its own (our ``FlowState`` is taken off it by ``addons/observer.release``), so reference counting frees
it and its bodies at once; what is left of the stream is a handful of small objects. Nothing in
mitmproxy reads a dropped stream's flow: events for a dropped stream are ignored by the HTTP layer, and
a stream that upgrades (WebSocket, HTTP 101) is never dropped. Process-wide (``pipeline.release_flows``):
once installed it stays until the process ends.
"""

from __future__ import annotations

import asyncio
import logging

from mitmproxy.proxy.layers.http import HttpLayer, HttpStream

log = logging.getLogger(__name__)

_installed = False


def _release(stream) -> None:
    stream.__dict__.pop("flow", None)


class _Streams(dict):
    """``HttpLayer.streams``: a dropped stream lets go of its flow (once the current event is handled)."""

    __slots__ = ()

    def pop(self, key, *default):
        stream = dict.pop(self, key, *default)
        if stream is not None and "flow" in getattr(stream, "__dict__", {}):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on an event loop (mitmproxy's test harness): the collector frees it
                return stream
            loop.call_soon(_release, stream)
        return stream


def install() -> bool:
    """Patch mitmproxy's HTTP layer (once per process); False when its layout is not the one expected
    (another mitmproxy version): nothing is changed then, and full collections free the flows as before."""
    global _installed
    if _installed:
        return True
    init = HttpLayer.__init__
    if not hasattr(HttpStream, "__annotations__") or "flow" not in HttpStream.__annotations__:
        log.warning("contextwarden: mitmproxy's HttpStream has no flow: finished flows left to the collector")
        return False

    def __init__(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        if type(self.streams) is dict:
            self.streams = _Streams(self.streams)

    __init__.__wrapped__ = init  # type: ignore[attr-defined]
    HttpLayer.__init__ = __init__  # type: ignore[method-assign]
    _installed = True
    return True
