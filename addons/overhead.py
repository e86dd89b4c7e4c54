"""The proxy's own added time, told to the client: ``x-contextwarden-overhead-ms`` on every response to a
request of a known API, from the moment mitmproxy had read the whole request to the end of this addon's
``request`` hook (after contextwarden's): the time until the request went upstream.
"""

from __future__ import annotations

import time

from mitmproxy import http

HEADER = "x-contextwarden-overhead-ms"
KNOWN = ("contextwarden", "contextwarden_engine")  # the flow's metadata: in-process state, or the engine's mirror


class Overhead:
    def request(self, flow: http.HTTPFlow) -> None:
        if any(k in flow.metadata for k in KNOWN) and flow.request.timestamp_end:
            ms = max(0.0, (time.time() - flow.request.timestamp_end) * 1000)
            flow.metadata[HEADER] = f"{ms:.1f}"
            if flow.response is not None:  # answered here: no upstream
                flow.response.headers[HEADER] = flow.metadata[HEADER]

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        ms = flow.metadata.get(HEADER)
        if ms is not None and flow.response is not None and HEADER not in flow.response.headers:
            flow.response.headers[HEADER] = ms

    response = responseheaders  # (whichever of the two sees the response first adds the header)
