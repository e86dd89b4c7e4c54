"""A stand-in for the endpoints the real Codex CLI talks to: the Responses API over HTTP (SSE) and over
its WebSocket transport, on both the API path (``/v1/responses``) and the ChatGPT-plan path
(``/backend-api/codex/responses``), plus the model list Codex reads before it offers tools.

``CodexStandIn`` is a :class:`tests.support.upstream.StandIn` (same records, ``planner``, ``strict``,
``reset``), whose handler also

- serves ``GET /v1/models`` and ``GET /backend-api/codex/models`` in the shape Codex reads;
- accepts a WebSocket upgrade on the Responses paths: every client text message is recorded as a
  :class:`Recorded` with method ``WS`` (its bytes exactly as received), and a ``response.create``
  message is answered with the same events the SSE stream carries, one JSON text message each;
  ``StandIn.strict`` checks it like an HTTP body (an ``error`` event names the first problem);
- answers ``POST`` on the ChatGPT-plan path like ``/v1/responses``.

WebSocket messages the server sent are kept per connection in ``CodexStandIn.ws_sent`` (text, in
order), so a test can compare them with what the client received.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from typing import Any

from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage

from .upstream import Recorded, StandIn, _Handler, _responses_problems, decode_content, response_events

RESPONSES_ROUTES = ("/v1/responses", "/backend-api/codex/responses")
MODELS_ROUTES = ("/v1/models", "/backend-api/codex/models")
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def models_body(slug: str) -> dict[str, Any]:
    """The model list Codex reads (its ``ModelInfo`` fields); one model, ``slug``, offering the shell tool."""
    return {"models": [{
        "slug": slug, "display_name": slug, "description": "stand-in model", "default_reasoning_level": "medium",
        "supported_reasoning_levels": [{"effort": "medium", "description": "medium"}],
        "shell_type": "shell_command", "visibility": "list", "supported_in_api": True, "priority": 1,
        "availability_nux": None, "upgrade": None, "base_instructions": "You are a stand-in coding agent.",
        "supports_reasoning_summaries": False, "default_reasoning_summary": "auto", "support_verbosity": False,
        "default_verbosity": None, "apply_patch_tool_type": None, "truncation_policy": {"mode": "bytes", "limit": 10000},
        "supports_parallel_tool_calls": False, "context_window": 272000, "auto_compact_token_limit": None,
        "effective_context_window_percent": 95, "experimental_supported_tools": [], "input_modalities": ["text"],
        "prefer_websockets": True,
    }]}


class CodexStandIn(StandIn):
    def __init__(self, *, model: str = "gpt-5-codex", **kw) -> None:
        super().__init__(**kw)
        self.model = model
        self.ws_sent: list[list[str]] = []  # per WebSocket connection, the text messages sent
        self.ws_connections = 0

    def start(self) -> "CodexStandIn":
        import http.server

        handler = type("Handler", (_CodexHandler,), {"standin": self})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="codex-standin", daemon=True)
        self._thread.start()
        return self

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self.ws_sent.clear()

    def ws_requests(self) -> list[Recorded]:
        return [r for r in self.requests() if r.method == "WS"]

    def api_requests(self) -> list[Recorded]:
        """Every Responses request, HTTP or WebSocket, in arrival order."""
        return [r for r in self.requests() if r.route.rstrip("/") in RESPONSES_ROUTES and r.method in ("POST", "WS")]


def _sse_payload(ev: bytes) -> str:
    """The JSON of one SSE event the shared stand-in builds (``event: ...\\ndata: {...}\\n\\n``)."""
    for line in ev.decode().splitlines():
        if line.startswith("data: "):
            return line[6:]
    raise ValueError(f"no data line in {ev!r}")


class _CodexHandler(_Handler):
    standin: CodexStandIn

    def do_GET(self) -> None:
        route = self.path.split("?", 1)[0].rstrip("/")
        if route in RESPONSES_ROUTES and (self.headers.get("Upgrade") or "").lower() == "websocket":
            return self._websocket(route)
        if route in MODELS_ROUTES:
            rec = Recorded("GET", self.path, list(self.headers.items()), b"", time.time())
            self.standin._record(rec)
            try:
                return self._json(rec, 200, models_body(self.standin.model))
            finally:
                rec.t_done = time.time()
        return self._handle()

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0].rstrip("/") == "/backend-api/codex/responses":
            self.path = "/v1/responses" + (("?" + self.path.split("?", 1)[1]) if "?" in self.path else "")
            self.headers["X-Standin-Original-Path"] = "/backend-api/codex/responses"
        return self._handle()

    # -- WebSocket -------------------------------------------------------------------------

    def _websocket(self, route: str) -> None:
        si = self.standin
        key = self.headers.get("Sec-WebSocket-Key") or ""
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        headers = list(self.headers.items())
        self.send_response_only(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        ws = Connection(ConnectionType.SERVER)
        sent: list[str] = []
        with si._lock:
            si.ws_sent.append(sent)
            si.ws_connections += 1
        sock = self.connection
        parts: list[str] = []
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            ws.receive_data(data or None)
            for ev in ws.events():
                if isinstance(ev, Ping):
                    sock.sendall(ws.send(ev.response()))
                elif isinstance(ev, CloseConnection):
                    try:
                        sock.sendall(ws.send(ev.response()))
                    except Exception:
                        pass
                    return
                elif isinstance(ev, (TextMessage, BytesMessage)):
                    parts.append(ev.data if isinstance(ev, TextMessage) else ev.data.decode("utf-8", "replace"))
                    if not ev.message_finished:
                        continue
                    text, parts = "".join(parts), []
                    for out in self._ws_answer(route, headers, text):
                        sent.append(out)
                        sock.sendall(ws.send(Message(data=out)))
            if not data:
                return

    def _ws_answer(self, route: str, headers: list[tuple[str, str]], text: str) -> list[str]:
        si = self.standin
        rec = Recorded("WS", route, headers, text.encode(), time.time())
        si._record(rec)
        try:
            try:
                msg = json.loads(text)
            except ValueError:
                return [json.dumps({"type": "error", "status": 400, "error": {"type": "invalid_request_error",
                                                                            "message": "message is not JSON"}})]
            if not isinstance(msg, dict) or msg.get("type") != "response.create":
                return []
            body = {k: v for k, v in msg.items() if k != "type"}
            if si.strict:
                rec.problems = _responses_problems(body)
                if rec.problems:
                    rec.status = 400
                    return [json.dumps({"type": "error", "status": 400, "error": {
                        "type": "invalid_request_error", "code": "invalid_request_error", "message": rec.problems[0]}})]
            rec.status = 200
            decoded = decode_content(rec.body, None)
            return [_sse_payload(ev) for ev in response_events(si, {**body, "stream": True}, decoded)]
        finally:
            rec.t_done = time.time()


