"""mitmproxy's finished flows freed by reference counting, not by a full garbage collection.

Two reference cycles held every flow, and so its bodies, until a full collection (under load ~15 MB/s
of garbage, and a pause of 0.1-0.4 s each time):

- mitmproxy's ``HttpStream`` layer (one per request) is a cycle (its state is its own bound methods)
  holding the request's ``flow``. :func:`install` makes the HTTP layer's ``streams`` a dict that, when
  a stream is dropped, cuts the stream's reference to its flow once the event being handled is done
  (``call_soon``: the stream's last commands, sent right after ``DropStream``, never read the flow).
  Nothing in mitmproxy reads a dropped stream's flow, and a stream that upgrades (WebSocket, HTTP 101)
  is never dropped. Our ``FlowState`` is taken off the flow by ``addons/observer.release``.
- ``typecheck.check_option_type`` checks every ``RequestData`` / ``ResponseData`` mitmproxy builds (and
  every mirror the engine rebuilds with ``from_state``). For an optional field that is None it tries
  the other type first, which raises a ``TypeError`` kept in a local of the raising frame: exception,
  traceback and frame are a cycle, and the frame's callers hold the request being built. The
  replacement tries a union's members the same way, in the same order, with the same error, and cuts
  each caught exception from its traceback.

Process-wide (``pipeline.release_flows``): once installed it stays until the process ends; a mitmproxy
whose layout is not the one expected is left as it is.
"""

from __future__ import annotations

import asyncio
import logging
import typing
from types import UnionType
from typing import Any

from mitmproxy.proxy.layers.http import HttpLayer, HttpStream
from mitmproxy.utils import typecheck

log = logging.getLogger(__name__)

_installed = False
_ORIGINAL_CHECK: Any = getattr(typecheck, "check_option_type", None)


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


def _check(name: str, value: Any, typeinfo: Any) -> None:
    origin = typing.get_origin(typeinfo)
    if origin is typing.Union or origin is UnionType:
        for T in typing.get_args(typeinfo):
            try:
                _check(name, value, T)
            except TypeError as e:
                e.__traceback__ = None  # the raising frame (and its callers') freed by reference counting
                continue
            return
        raise TypeError(f"Expected {typeinfo} for {name}, but got {type(value)}.")
    _ORIGINAL_CHECK(name, value, typeinfo)


def install() -> bool:
    """Both patches (once per process); False when mitmproxy's layout is not the one expected: nothing
    is changed then, and full collections free the flows as before. The original check's own recursion
    (tuples, sequences) looks the name up in its module, so it reaches the replacement too."""
    global _installed
    if _installed:
        return True
    if _ORIGINAL_CHECK is None or "flow" not in getattr(HttpStream, "__annotations__", {}):
        log.warning("contextwarden: mitmproxy's layout is not the one expected: finished flows left to the collector")
        return False
    init = HttpLayer.__init__

    def __init__(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        if type(self.streams) is dict:
            self.streams = _Streams(self.streams)

    __init__.__wrapped__ = init  # type: ignore[attr-defined]
    HttpLayer.__init__ = __init__  # type: ignore[method-assign]
    typecheck.check_option_type = _check
    _installed = True
    return True
