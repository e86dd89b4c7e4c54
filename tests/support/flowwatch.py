"""Test-only mitmproxy script: which finished flows are still alive, the interpreter's full collections off.

    mitmdump -s addons/contextwarden.py -s tests/support/flowwatch.py ...

Load it AFTER contextwarden's script. It keeps the young generations' collections (they run under any
load) but no full collection (threshold), and when a response's headers come it runs a collection of
the middle generation, so the flow (alive then) is in the oldest generation, as under load: a flow
that is cyclic garbage afterwards is then only freed by a full collection, which never comes here.
``GET /__flowwatch`` answers ``{"finished": n, "alive": [seconds since each live one finished]}`` for
the flows whose response or error came (the contextwarden runtime's own full collections must be off:
``pipeline.gc_full_s=0``, ``pipeline.gc_idle_s=0``).
"""

from __future__ import annotations

import gc
import json
import time
import weakref

from mitmproxy import http

PATH = "/__flowwatch"


class FlowWatch:
    def __init__(self) -> None:
        self.finished: list[tuple[weakref.ref, float]] = []

    def running(self) -> None:
        gc.set_threshold(700, 10, 1_000_000_000)  # young collections as usual; no full one

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.path.startswith(PATH):
            now = time.monotonic()
            alive = [round(now - t, 2) for r, t in self.finished if r() is not None]
            flow.response = http.Response.make(200, json.dumps({"finished": len(self.finished), "alive": alive}),
                                               {"content-type": "application/json"})

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        gc.collect(1)  # what is alive now (this flow) goes to the oldest generation

    def response(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def _finished(self, flow: http.HTTPFlow) -> None:
        if not flow.request.path.startswith(PATH):
            self.finished.append((weakref.ref(flow), time.monotonic()))


addons = [FlowWatch()]
