"""An upstream the proxy cannot reach answers a known API's client in that API's own error shape.

mitmproxy answers a failed upstream connection with its own HTML page and status 502. For a request of a
known API the client gets status 502 with the provider's error JSON instead (the dialect's
``error_answer``), which the SDKs read as an ``InternalServerError`` and retry with their backoff; its
message names the host and mitmproxy's reason. Other traffic keeps mitmproxy's page.

mitmproxy has no hook for that page: its HTTP/1 or HTTP/2 server side writes it when the flow's error is
reported. The answer is remembered in the ``error`` hook by client connection: the hook runs just before
that flow's page is written, so the connection holds the latest failed flow's answer, or none when that flow
is not a known API's (an answer left by a flow whose client went away is replaced before any other page). Wrappers of
``Http1Server.send`` and ``Http2Server._handle_event`` (installed while the addon runs) write it instead: on an
HTTP/2 connection (a client that negotiated h2 in regular mode, as curl and Rust's reqwest do) as the failed
stream's headers and body.
"""

from __future__ import annotations

from typing import Any

from mitmproxy import http
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands
from mitmproxy.proxy.layers.http import ResponseProtocolError
from mitmproxy.proxy.layers.http._http1 import Http1Server
from mitmproxy.proxy.layers.http._http2 import Http2Server

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
        self.answers: dict[str, http.Response] = {}  # client connection id -> its latest failed flow's answer
        self._original: Any = None

    def running(self) -> None:
        if self._original is not None:
            return
        send1, handle2, answers = Http1Server.send, Http2Server._handle_event, self.answers

        def send(server: Http1Server, event: Any) -> Any:
            if isinstance(event, ResponseProtocolError) and not server.response \
                    and (resp := answers.pop(server.conn.id, None)) is not None:
                if server.conn.state & ConnectionState.CAN_WRITE:
                    yield commands.SendData(server.conn, http1.assemble_response(resp))  # type: ignore[no-untyped-call]
                yield commands.CloseConnection(server.conn)
                return
            yield from send1(server, event)

        def handle(server: Http2Server, event: Any) -> Any:
            if isinstance(event, ResponseProtocolError) and server.is_open_for_us(event.stream_id) \
                    and not server.h2_conn.streams[event.stream_id].state_machine.headers_sent \
                    and (resp := answers.pop(server.conn.id, None)) is not None:
                fields = [(k.lower(), v) for k, v in resp.headers.fields if k.lower() != b"connection"]  # (not in HTTP/2)
                server.h2_conn.send_headers(event.stream_id, [(b":status", b"%d" % resp.status_code), *fields])
                server.h2_conn.send_data(event.stream_id, resp.content or b"", end_stream=True)
                yield commands.SendData(server.conn, server.h2_conn.data_to_send())
                return
            yield from handle2(server, event)

        self._original = (send1, handle2)
        Http1Server.send, Http2Server._handle_event = send, handle  # type: ignore[method-assign, assignment]

    def done(self) -> None:
        if self._original is not None:
            (Http1Server.send, Http2Server._handle_event), self._original = self._original, None  # type: ignore[method-assign]
        self.answers.clear()

    def request(self, flow: http.HTTPFlow) -> None:
        api = api_of(flow)  # now: the observer lets go of the flow's state before the error hook
        if api is not None:
            flow.metadata[KEY] = api

    def error(self, flow: http.HTTPFlow) -> None:
        self.answers.pop(flow.client_conn.id, None)  # (the page written next on this connection is this flow's)
        api = flow.metadata.get(KEY)
        if api is None or flow.response is not None or flow.error is None or self._original is None:
            return
        message = (f"contextwarden: the upstream {flow.request.host}:{flow.request.port} could not be reached "
                   f"({flow.error.msg})")
        body, headers = dialect(api).error_answer(message, False, "upstream")
        extra = {HEADER: flow.metadata[HEADER]} if HEADER in flow.metadata else {}
        resp = http.Response.make(502, body, {**headers, "connection": "close", **extra})
        self.answers[flow.client_conn.id] = resp

    def client_disconnected(self, client: Any) -> None:
        self.answers.pop(client.id, None)
