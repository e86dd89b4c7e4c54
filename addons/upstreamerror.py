"""An upstream the proxy cannot reach answers a known API's client in that API's own error shape.

mitmproxy answers a failed upstream connection with its own HTML page and status 502. For a request of a
known API the client gets status 502 with the provider's error JSON instead (the dialect's
``error_answer``), which the SDKs read as an ``InternalServerError`` and retry with their backoff; its
message names the host and mitmproxy's reason. Other traffic keeps mitmproxy's page.

mitmproxy has no hook for that page: its HTTP/1 server side writes it when the flow's error is reported.
The answer is remembered in the ``error`` hook (run just before) by client connection, and a wrapper of
``Http1Server.send`` (installed while the addon runs) writes it instead. HTTP/2 clients keep the page.
"""

from __future__ import annotations

from typing import Any

from mitmproxy import http
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands
from mitmproxy.proxy.layers.http import ResponseProtocolError
from mitmproxy.proxy.layers.http._http1 import Http1Server

from contextwarden.wire.apis import ApiKind
from contextwarden.wire.dialects import dialect

from .overhead import HEADER
from .routing import STATE

KEY = "contextwarden_api"


def api_of(flow: http.HTTPFlow) -> ApiKind | None:
    """The known API of a flow contextwarden read (in this process, or in the engine's mirror)."""
    state = flow.metadata.get(STATE)
    api = getattr(state, "api", None) or flow.metadata.get("contextwarden_engine")
    try:
        return ApiKind(getattr(api, "value", api)) if api else None
    except ValueError:
        return None


class UpstreamError:
    def __init__(self) -> None:
        self.answers: dict[str, bytes] = {}  # client connection id -> the answer's bytes, until written
        self._original: Any = None

    def running(self) -> None:
        if self._original is not None:
            return
        original, answers = Http1Server.send, self.answers

        def send(server: Http1Server, event: Any) -> Any:
            if isinstance(event, ResponseProtocolError) and not server.response:
                data = answers.pop(server.conn.id, None)
                if data is not None:
                    if server.conn.state & ConnectionState.CAN_WRITE:
                        yield commands.SendData(server.conn, data)
                    yield commands.CloseConnection(server.conn)
                    return
            yield from original(server, event)

        self._original, Http1Server.send = original, send  # type: ignore[method-assign, assignment]

    def done(self) -> None:
        if self._original is not None:
            Http1Server.send, self._original = self._original, None  # type: ignore[method-assign]
        self.answers.clear()

    def request(self, flow: http.HTTPFlow) -> None:
        api = api_of(flow)  # now: the observer lets go of the flow's state before the error hook
        if api is not None:
            flow.metadata[KEY] = api

    def error(self, flow: http.HTTPFlow) -> None:
        api = flow.metadata.get(KEY)
        if api is None or flow.response is not None or flow.error is None or self._original is None:
            return
        message = (f"contextwarden: the upstream {flow.request.host}:{flow.request.port} could not be reached "
                   f"({flow.error.msg})")
        body, headers = dialect(api).error_answer(message, False, "upstream")
        extra = {HEADER: flow.metadata[HEADER]} if HEADER in flow.metadata else {}
        resp = http.Response.make(502, body, {**headers, "connection": "close", **extra})
        self.answers[flow.client_conn.id] = http1.assemble_response(resp)  # type: ignore[no-untyped-call]

    def client_disconnected(self, client: Any) -> None:
        self.answers.pop(client.id, None)
