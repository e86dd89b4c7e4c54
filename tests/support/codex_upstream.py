"""A stand-in for the endpoints the real Codex CLI talks to: the Responses API over HTTP (SSE) and over
its WebSocket transport, on both the API path (``/v1/responses``) and the ChatGPT-plan path
(``/backend-api/codex/responses``), plus the model list Codex reads (``/backend-api/codex/models``,
``/v1/models``).

``CodexStandIn`` is a :class:`tests.support.upstream.StandIn` (same records, ``planner``, ``strict``,
``reset``; ``tool_name`` / ``tool_input`` default to Codex's ``exec_command``). It answers like the
real service does for Codex:

- each answer that calls a tool starts with a ``reasoning`` item whose ``encrypted_content`` is an
  HMAC-signed blob naming the call it goes with (Codex asks for ``reasoning.encrypted_content`` and
  sends these items back);
- WebSocket: each client text message is recorded as a :class:`Recorded` with method ``WS`` (its bytes
  exactly as received); ``response.create`` is answered with the events the SSE stream carries, one
  JSON text message each; the connection keeps each response's history, so a later request may send
  only its new items with ``previous_response_id`` (as Codex does); ``generate: false`` (Codex's
  warm-up) gets an empty response;
- ``StandIn.strict``: the request's whole input (the history behind ``previous_response_id`` included)
  is checked like the real API checks it: every call output has its call, no empty message, a
  ``previous_response_id`` the connection knows, every reasoning item the stand-in issued comes back
  byte for byte and right before the item it was issued with. A WebSocket request with a problem gets
  an ``error`` event, an HTTP one a 400.

Messages the server sent on each WebSocket connection are kept in ``CodexStandIn.ws_sent`` (text, in
order), so a test can compare them with what the client received.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import secrets
import time
from typing import Any

from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage

from .upstream import (
    Recorded,
    StandIn,
    _error,
    _Handler,
    _id,
    _openai_usage,
    _Plan,
    _response_obj,
    _responses_plan,
    _responses_problems,
)

RESPONSES_ROUTES = ("/v1/responses", "/backend-api/codex/responses")
MODELS_ROUTES = ("/v1/models", "/backend-api/codex/models")
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_KEY = secrets.token_bytes(32)


def models_body(slug: str) -> dict[str, Any]:
    """The model list Codex reads (its ``ModelInfo`` fields); one model, ``slug``."""
    return {"models": [{
        "slug": slug, "display_name": slug, "description": "stand-in model", "default_reasoning_level": "medium",
        "supported_reasoning_levels": [{"effort": "medium", "description": "medium"}],
        "shell_type": "shell_command", "visibility": "list", "supported_in_api": True, "priority": 1,
        "base_instructions": "You are a stand-in coding agent.", "supports_reasoning_summaries": False,
        "support_verbosity": False, "truncation_policy": {"mode": "bytes", "limit": 10000},
        "supports_parallel_tool_calls": False, "context_window": 272000, "experimental_supported_tools": [],
        "input_modalities": ["text"],
    }]}


def encrypted_reasoning(follows: str) -> str:
    """An opaque blob like the real ``encrypted_content``: names the item it was issued with, signed."""
    payload = json.dumps({"next": follows, "n": secrets.token_hex(24)}).encode()
    return base64.b64encode(payload + hmac.new(_KEY, payload, hashlib.sha256).digest()).decode()


def _reasoning_next(blob: Any) -> str | None:
    """The item a blob of :func:`encrypted_reasoning` was issued with; None if it is not one, or altered."""
    try:
        raw = base64.b64decode(blob, validate=True)
    except Exception:
        return None
    payload, sig = raw[:-32], raw[-32:]
    if len(raw) <= 32 or not hmac.compare_digest(sig, hmac.new(_KEY, payload, hashlib.sha256).digest()):
        return None
    return json.loads(payload)["next"]


def codex_problems(items: list[Any]) -> list[str]:
    """What the real Responses API rejects in a (whole) input: the shared checks, and reasoning items
    that were altered or separated from the item they were issued with."""
    problems = _responses_problems({"input": items})
    for i, it in enumerate(items):
        if not isinstance(it, dict) or it.get("type") != "reasoning" or "encrypted_content" not in it:
            continue
        follows = _reasoning_next(it.get("encrypted_content"))
        if follows is None:
            problems.append(f"input[{i}]: The encrypted content for item {it.get('id')} could not be verified.")
            continue
        nxt = items[i + 1] if i + 1 < len(items) else None
        key = nxt.get("call_id") or nxt.get("id") if isinstance(nxt, dict) else None
        if key != follows:
            problems.append(f"input[{i}]: Item '{it.get('id')}' of type 'reasoning' was provided without its required following item.")
    return problems


def codex_output(si: StandIn, body: dict) -> list[dict]:
    """The output items of one answer: a message, then reasoning + a call of ``tool_name`` (either may be absent)."""
    plan = _responses_plan(si, body)
    out = []
    if plan.text:  # (with a call: the model's notes before it)
        out.append({"type": "message", "id": _id("msg_"), "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": plan.text, "annotations": []}]})
    if plan.tool:
        tid, name, tinput = plan.tool
        out += [{"type": "reasoning", "id": _id("rs_"), "summary": [], "encrypted_content": encrypted_reasoning(tid)},
                {"type": "function_call", "id": _id("fc_"), "call_id": tid, "name": name,
                 "arguments": json.dumps(tinput), "status": "completed"}]
    return out


def codex_events(si: StandIn, body: dict, output: list[dict], decoded: bytes, rid: str) -> list[dict]:
    """The events of one answer, as the SSE stream and the WebSocket carry them."""
    seq = itertools.count()
    out: list[dict] = []

    def ev(kind: str, **data) -> None:
        out.append({"type": kind, "sequence_number": next(seq), **data})

    ev("response.created", response=_response_obj(body, "in_progress", [], None, rid))
    ev("response.in_progress", response=_response_obj(body, "in_progress", [], None, rid))
    for oi, item in enumerate(output):
        if item["type"] == "function_call":
            ev("response.output_item.added", output_index=oi, item={**item, "arguments": "", "status": "in_progress"})
            ev("response.function_call_arguments.delta", item_id=item["id"], output_index=oi, delta=item["arguments"])
            ev("response.function_call_arguments.done", item_id=item["id"], output_index=oi, arguments=item["arguments"])
        elif item["type"] == "message":
            text = item["content"][0]["text"]
            ev("response.output_item.added", output_index=oi, item={**item, "content": [], "status": "in_progress"})
            part = {"type": "output_text", "text": "", "annotations": []}
            ev("response.content_part.added", item_id=item["id"], output_index=oi, content_index=0, part=part)
            ev("response.output_text.delta", item_id=item["id"], output_index=oi, content_index=0, delta=text, logprobs=[])
            ev("response.output_text.done", item_id=item["id"], output_index=oi, content_index=0, text=text, logprobs=[])
            ev("response.content_part.done", item_id=item["id"], output_index=oi, content_index=0, part={**part, "text": text})
        else:
            ev("response.output_item.added", output_index=oi, item=item)
        ev("response.output_item.done", output_index=oi, item=item)
    plan = _Plan(text=" ".join(i["content"][0]["text"] for i in output if i["type"] == "message"),
                 tool=next((("", "", {}) for i in output if i["type"] == "function_call"), None))
    ev("response.completed", response=_response_obj(body, "completed", output, _openai_usage(si, body, decoded, plan, True), rid))
    return out


def _ws_error(status: int, message: str, code: str = "invalid_request_error") -> dict:
    return {"type": "error", "status": status, "error": {"type": "invalid_request_error", "code": code, "message": message}}


class CodexStandIn(StandIn):
    def __init__(self, *, model: str = "gpt-5-codex", tool_name: str = "exec_command", tool_input: dict | None = None,
                 **kw) -> None:
        super().__init__(tool_name=tool_name, tool_input=tool_input or {"cmd": "ls"}, **kw)
        self.model = model
        self.ws_sent: list[list[str]] = []  # per WebSocket connection, the text messages sent
        self.handler_class = _CodexHandler

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self.ws_sent.clear()

    def api_requests(self, method: str | None = None) -> list[Recorded]:
        """Every Responses request (``POST`` over HTTP, ``WS`` messages), in arrival order."""
        return [r for r in self.requests() if r.route.rstrip("/") in RESPONSES_ROUTES
                and r.method in ((method,) if method else ("POST", "WS"))]

    def answer(self, body: dict, decoded: bytes, history: dict[str, list] | None, rec: Recorded) -> tuple[int, list[dict]]:
        """(status, events) for one Responses request. ``history``: the connection's responses by id
        (WebSocket), for ``previous_response_id``."""
        prev = body.get("previous_response_id")
        inp = body.get("input")
        items = inp if isinstance(inp, list) else ([{"role": "user", "content": inp}] if isinstance(inp, str) else [])
        if prev:
            if history is None or prev not in history:
                rec.problems = [f"Previous response with id '{prev}' not found."]
                return 400, [_ws_error(400, rec.problems[0], "previous_response_not_found")]
            items = history[prev] + items
        if self.strict:
            rec.problems = codex_problems(items)
            if rec.problems:
                return 400, [_ws_error(400, rec.problems[0])]
        rid = _id("resp_")
        whole = {**body, "input": items}
        output = [] if body.get("generate") is False else codex_output(self, whole)
        if history is not None:
            history[rid] = items + output
        return 200, codex_events(self, body, output, decoded, rid)


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
        route = self.path.split("?", 1)[0].rstrip("/")
        if route not in RESPONSES_ROUTES:
            return self._handle()
        si = self.standin
        rec = Recorded("POST", self.path, list(self.headers.items()), self._read_body(), time.time())
        si._record(rec)
        try:
            decoded = rec.decoded_body()
            body = json.loads(decoded)
            status, events = si.answer(body, decoded, None, rec)
            if status != 200:
                return self._json(rec, status, _error("openai", status, rec.problems[0]))
            if not body.get("stream"):
                return self._json(rec, 200, events[-1]["response"])
            self._sse(rec, [f"event: {e['type']}\ndata: {json.dumps(e, separators=(',', ':'))}\n\n".encode() for e in events])
        finally:
            rec.t_done = time.time()

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
        history: dict[str, list] = {}
        with si._lock:
            si.ws_sent.append(sent)
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
                    for out in self._ws_answer(route, headers, text, history):
                        sent.append(out)
                        sock.sendall(ws.send(Message(data=out)))
            if not data:
                return

    def _ws_answer(self, route: str, headers: list[tuple[str, str]], text: str, history: dict[str, list]) -> list[str]:
        si = self.standin
        rec = Recorded("WS", route, headers, text.encode(), time.time())
        si._record(rec)
        try:
            try:
                msg = json.loads(text)
            except ValueError:
                rec.status = 400
                return [json.dumps(_ws_error(400, "message is not JSON"))]
            if not isinstance(msg, dict) or msg.get("type") != "response.create":
                return []
            body = {k: v for k, v in msg.items() if k != "type"}
            rec.status, events = si.answer(body, rec.body, history, rec)
            return [json.dumps(e, separators=(",", ":")) for e in events]
        finally:
            rec.t_done = time.time()
