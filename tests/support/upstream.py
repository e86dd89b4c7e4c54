"""A local stand-in for the Anthropic and OpenAI APIs, for end-to-end tests and benchmarks.

``StandIn`` is a real HTTP/1.1 server on 127.0.0.1 (a free port, threaded, plain HTTP). It answers

- Anthropic ``POST /v1/messages`` (with or without ``?beta=true``) and ``/v1/messages/count_tokens``,
- OpenAI ``POST /v1/chat/completions``, ``/v1/responses`` and ``/v1/responses/compact``,
- the providers' own context management (context editing, compaction blocks and items, usage
  iterations, ``/v1/responses/compact``), strictly checked (``provider_cm``),
- ``GET /v1/models``; anything else gets a 404 in Anthropic's error shape,

streaming (SSE, one flush per event, ``sse_delay`` seconds between events) or as one JSON body,
with usage fields that look like the provider's (input tokens estimated from the body size, prompt
cache creation on the first sight of a cached prefix and cache reads afterwards).

Tool use is scripted so a real client's tool loop runs to the end: when the request offers the
tool ``tool_name`` and the conversation does not yet end with a tool result, the answer calls it
with ``tool_input``; after a tool result, the answer is text quoting the result.

Failure modes on demand, per request: header ``x-standin-mode: 429|500|drop|gzip|zstd`` (comma
separated to combine an encoding with ``drop``), or ``StandIn.queue(...)`` for the next requests,
or ``StandIn.mode`` for all. ``x-standin-delay-ms`` overrides the event delay of one request.

Every request is recorded (method, path, headers in wire order, raw body bytes, times) in
``StandIn.records``; streamed responses also record when each event was written.

Opt-in, for tests that need more than one tool round or a strict upstream (``reset()`` turns them off):

- ``StandIn.planner``: ``planner(api, body)`` returns ``(text, (tool_name, tool_input) | None)`` to
  script the answer (multi-round tool loops), or ``None`` for the default answer (``api`` is
  ``"anthropic"``, ``"openai_chat"`` or ``"openai_responses"``);
- ``StandIn.strict``: the request is checked like the real API checks it (:func:`strict_problems`) and
  answered with a 400 ``invalid_request_error`` naming the first problem; ``Recorded.problems`` lists
  them all;
- ``StandIn.thinking``: Anthropic answers to a request with thinking enabled start with a thinking
  block whose ``signature`` is an HMAC of its text, which the strict check verifies on every thinking
  block it gets back (so a modified thinking block is rejected like the real API rejects it).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import http.server
import itertools
import json
import secrets
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zstandard

from . import provider_cm
from .wait import wait_until

_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}{next(_ids):04d}{secrets.token_hex(8)}"


@dataclass
class Recorded:
    """One request as the stand-in received it."""

    method: str
    path: str  # with the query string
    headers: list[tuple[str, str]]  # names and values as sent, in order
    body: bytes  # raw bytes, still content-encoded if the client encoded them
    t_received: float  # time.time() when the body was read
    modes: tuple[str, ...] = ()
    status: int | None = None
    event_times: list[float] = field(default_factory=list)  # time.time() just before each SSE event was written
    t_done: float | None = None
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    response_body: bytearray = field(default_factory=bytearray)  # as written (encoded, not chunk-framed)
    problems: list[str] = field(default_factory=list)  # what the strict check found (StandIn.strict)

    @property
    def route(self) -> str:
        return self.path.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def decoded_body(self) -> bytes:
        return decode_content(self.body, self.header("content-encoding"))

    def json(self) -> Any:
        return json.loads(self.decoded_body())


def decode_content(raw: bytes, encoding: str | None) -> bytes:
    """Undo a Content-Encoding (gzip, zstd, deflate; anything else is returned as is)."""
    enc = (encoding or "").strip().lower()
    if enc == "gzip":
        return gzip.decompress(raw)
    if enc == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    if enc == "deflate":
        return zlib.decompress(raw)
    return raw


class _Encoder:
    """Content-encodes a response, flushing after every piece so SSE events still arrive one by one."""

    def __init__(self, encoding: str | None) -> None:
        self.encoding = encoding
        if encoding == "gzip":
            self._c: Any = zlib.compressobj(wbits=31)
        elif encoding == "zstd":
            self._c = zstandard.ZstdCompressor().compressobj()
        else:
            self._c = None

    def piece(self, data: bytes) -> bytes:
        if self._c is None:
            return data
        if self.encoding == "gzip":
            return self._c.compress(data) + self._c.flush(zlib.Z_SYNC_FLUSH)
        return self._c.compress(data) + self._c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def end(self) -> bytes:
        return self._c.flush() if self._c is not None else b""

    def whole(self, data: bytes) -> bytes:
        return self.piece(data) + self.end()


class _Dropped(Exception):
    """The scripted connection drop happened; the handler closes the socket."""


class _Server(http.server.ThreadingHTTPServer):
    # Python's listen backlog is 5: fifty clients connecting at once (the load benchmark) overflowed it,
    # and a connection the kernel dropped from the queue reads as an error in the client
    request_queue_size = 256


class StandIn:
    """A threaded local Anthropic/OpenAI stand-in. Use as a context manager, or ``start()``/``stop()``."""

    def __init__(self, *, sse_delay: float = 0.0, tool_name: str = "Bash", tool_input: dict | None = None,
                 text: str = "Hello from the stand-in upstream.", drop_after_events: int = 3,
                 retry_after: str = "7") -> None:
        self.sse_delay = sse_delay
        self.tool_name = tool_name
        self.tool_input = tool_input if tool_input is not None else {"command": "ls"}
        self.text = text
        self.drop_after_events = drop_after_events
        self.retry_after = retry_after
        self.mode: str = ""  # default modes for every request, e.g. "gzip"
        self.planner: Callable[[str, dict], tuple[str, tuple[str, dict] | None] | None] | None = None
        self.strict = False  # check requests like the real API and answer 400 (see strict_problems)
        self.thinking = False  # Anthropic: answer with a signed thinking block when thinking is enabled
        self.window: int | None = None  # Anthropic: a longer request (bytes / 4) gets the API's "prompt is too long"
        self.compactions: dict[str, dict] = {}  # compaction blocks / items issued, by their opaque part (provider_cm)
        self.records: list[Recorded] = []
        self._queued: list[str] = []
        self._seen_prefixes: set[str] = set()
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    handler_class: type | None = None  # a subclass of _Handler (None: _Handler), for stand-ins that answer more

    def start(self) -> StandIn:
        handler = type("Handler", (self.handler_class or _Handler,), {"standin": self})
        server = _Server(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- control and inspection --------------------------------------------------------------

    def queue(self, *modes: str) -> None:
        """Modes for the next API requests, one entry per request (e.g. ``queue("429", "")``)."""
        with self._lock:
            self._queued.extend(modes)

    def reset(self) -> None:
        """Forget records and queued modes, and restore the defaults tests may have changed."""
        with self._lock:
            self.records.clear()
            self._queued.clear()
            self.mode = ""
            self.sse_delay = 0.0
            self.planner = None
            self.strict = False
            self.thinking = False
            self.window = None  # (compactions stay: a provider can verify its blocks for good)

    def requests(self, route: str | None = None) -> list[Recorded]:
        """Recorded requests, optionally only those whose path (without query) equals ``route``."""
        with self._lock:
            recs = list(self.records)
        return [r for r in recs if route is None or r.route == route]

    def wait_for(self, n: int, route: str | None = None, timeout: float = 10.0) -> list[Recorded]:
        """Wait until at least ``n`` requests (to ``route``) were received and answered."""
        recs: list[Recorded] = []

        def enough() -> bool:
            recs[:] = [r for r in self.requests(route) if r.t_done is not None]
            return len(recs) >= n
        wait_until(enough, timeout, interval=0.02)
        return recs

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self.records.append(rec)

    def _modes_for(self, rec_headers: list[tuple[str, str]], api_request: bool) -> tuple[str, ...]:
        explicit = next((v for k, v in rec_headers if k.lower() == "x-standin-mode"), None)
        with self._lock:
            queued = self._queued.pop(0) if api_request and self._queued and explicit is None else None
        raw = explicit if explicit is not None else queued if queued is not None else self.mode
        return tuple(m.strip().lower() for m in raw.split(",") if m.strip())

    def _cache_usage(self, key_material: bytes, est: int, cached: bool) -> tuple[int, int]:
        """(cache_creation, cache_read) for a request whose cacheable prefix hashes to ``key_material``."""
        if not cached or est < 10:
            return 0, 0
        key = hashlib.sha256(key_material).hexdigest()
        with self._lock:
            seen = key in self._seen_prefixes
            self._seen_prefixes.add(key)
        part = int(est * 0.9)
        return (0, part) if seen else (part, 0)


# -- answers ---------------------------------------------------------------------------------


def _sse(event: str | None, data: Any) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (f"event: {event}\n" if event else "").encode() + f"data: {payload}\n\n".encode()


def _chunks(text: str, n: int = 3) -> list[str]:
    size = max(1, -(-len(text) // n))
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(_text_of(b.get("content", b.get("text", ""))) if isinstance(b, dict) else str(b) for b in content)
    return ""


@dataclass
class _Plan:
    """What to answer: a tool call or text."""

    text: str
    tool: tuple[str, str, dict] | None = None  # (id, name, input)
    thinking: str | None = None  # Anthropic: a signed thinking block first (StandIn.thinking)


def _planned(si: StandIn, api: str, body: dict, id_prefix: str) -> _Plan | None:
    """The answer ``StandIn.planner`` scripts, if any."""
    if si.planner is None:
        return None
    got = si.planner(api, body)
    if got is None:
        return None
    text, tool = got
    return _Plan(text=text, tool=(_id(id_prefix), tool[0], tool[1]) if tool else None)


_SIGNING_KEY = secrets.token_bytes(32)


def thinking_signature(thinking: str) -> str:
    """The signature the stand-in gives a thinking block (an HMAC of its text, base64)."""
    mac = hmac.new(_SIGNING_KEY, thinking.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return base64.b64encode(b"standin" + mac).decode()


def _with_thinking(si: StandIn, body: dict, plan: _Plan) -> _Plan:
    th = body.get("thinking")
    if si.thinking and isinstance(th, dict) and th.get("type") in ("enabled", "adaptive"):
        plan.thinking = f"Thinking about the next step ({_id('th_')}): " + (plan.text[:80] or "a tool call")
    return plan


def _anthropic_plan(si: StandIn, body: dict) -> _Plan:
    planned = _planned(si, "anthropic", body, "toolu_")
    if planned is not None:
        return _with_thinking(si, body, planned)
    return _with_thinking(si, body, _default_anthropic_plan(si, body))


def _default_anthropic_plan(si: StandIn, body: dict) -> _Plan:
    tools = [t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
    users = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
    last = users[-1].get("content") if users else None
    results = [b for b in last if isinstance(b, dict) and b.get("type") == "tool_result"] if isinstance(last, list) else []
    if results:
        return _Plan(text=f"The tool returned: {_text_of(results[-1].get('content'))[:400]}")
    if si.tool_name in tools:
        return _Plan(text="I'll run the tool.", tool=(_id("toolu_"), si.tool_name, si.tool_input))
    return _Plan(text=si.text)


def _openai_chat_plan(si: StandIn, body: dict) -> _Plan:
    planned = _planned(si, "openai_chat", body, "call_")
    if planned is not None:
        return planned
    msgs = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    tools = [(t.get("function") or {}).get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
    if msgs and msgs[-1].get("role") == "tool":
        return _Plan(text=f"The tool returned: {_text_of(msgs[-1].get('content'))[:400]}")
    if si.tool_name in tools:
        return _Plan(text="", tool=(_id("call_"), si.tool_name, si.tool_input))
    return _Plan(text=si.text)


def _responses_plan(si: StandIn, body: dict) -> _Plan:
    planned = _planned(si, "openai_responses", body, "call_")
    if planned is not None:
        return planned
    inp = body.get("input")
    items = inp if isinstance(inp, list) else []
    tools = [t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
    if items and isinstance(items[-1], dict) and items[-1].get("type") == "function_call_output":
        return _Plan(text=f"The tool returned: {str(items[-1].get('output'))[:400]}")
    if si.tool_name in tools:
        return _Plan(text="", tool=(_id("call_"), si.tool_name, si.tool_input))
    return _Plan(text=si.text)


def _estimate_tokens(decoded: bytes) -> int:
    return max(1, len(decoded) // 4)


def _anthropic_usage(si: StandIn, body: dict, decoded: bytes, managed: provider_cm.Managed | None = None) -> dict:
    est = _estimate_tokens(decoded)
    if managed is not None:  # what the provider's own context management dropped or cleared is not input
        est = max(1, est - managed.dropped - managed.cleared)
    cached = b"cache_control" in decoded
    prefix = json.dumps([body.get("system"), body.get("tools")], sort_keys=True).encode()
    creation, read = si._cache_usage(prefix, est, cached)
    return {"input_tokens": est - creation - read, "cache_creation_input_tokens": creation,
            "cache_read_input_tokens": read, "output_tokens": 0, "service_tier": "standard"}


def _anthropic_managed(si: StandIn, body: dict, decoded: bytes) -> tuple[_Plan, provider_cm.Managed]:
    g = provider_cm.anthropic_managed(si, body, _estimate_tokens(decoded))
    plan = _anthropic_plan(si, body)
    if g.paused:
        plan = _Plan(text="")
    return plan, g


def _usage_extras(g: provider_cm.Managed, usage: dict) -> dict:
    """``usage.iterations`` when the provider compacted (the top-level fields: the sampling alone)."""
    return {**usage, "iterations": provider_cm.iterations(g, usage)} if g.compaction_usage else usage


def _out_tokens(plan: _Plan) -> int:
    return max(1, len(plan.text) // 4) + (24 if plan.tool else 0)


def anthropic_events(si: StandIn, body: dict, decoded: bytes) -> list[bytes]:
    plan, g = _anthropic_managed(si, body, decoded)
    usage = _anthropic_usage(si, body, decoded, g)
    msg: dict[str, Any] = {"id": _id("msg_"), "type": "message", "role": "assistant", "model": body.get("model") or "claude-sonnet-4-6",
           "content": [], "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}
    out = [_sse("message_start", {"type": "message_start", "message": msg})]
    index = 0
    if g.block is not None:  # the summary arrives whole in one compaction_delta
        out.append(_sse("content_block_start", {"type": "content_block_start", "index": index,
                                                "content_block": {"type": "compaction", "content": None}}))
        out.append(_sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                "delta": {"type": "compaction_delta", **{k: v for k, v in g.block.items() if k != "type"}}}))
        out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    if plan.thinking:
        out.append(_sse("content_block_start", {"type": "content_block_start", "index": index,
                                                "content_block": {"type": "thinking", "thinking": "", "signature": ""}}))
        for piece in _chunks(plan.thinking, 2):
            out.append(_sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                    "delta": {"type": "thinking_delta", "thinking": piece}}))
        out.append(_sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                "delta": {"type": "signature_delta", "signature": thinking_signature(plan.thinking)}}))
        out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    if plan.text:
        out.append(_sse("content_block_start", {"type": "content_block_start", "index": index,
                                                "content_block": {"type": "text", "text": ""}}))
        out.append(_sse("ping", {"type": "ping"}))
        for piece in _chunks(plan.text):
            out.append(_sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                    "delta": {"type": "text_delta", "text": piece}}))
        out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    if plan.tool:
        tid, name, tinput = plan.tool
        out.append(_sse("content_block_start", {"type": "content_block_start", "index": index,
                                                "content_block": {"type": "tool_use", "id": tid, "name": name, "input": {}}}))
        for piece in _chunks(json.dumps(tinput), 2):
            out.append(_sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                    "delta": {"type": "input_json_delta", "partial_json": piece}}))
        out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    delta_usage = {"output_tokens": _out_tokens(plan)}
    delta = {"type": "message_delta", "delta": {"stop_reason": _stop(plan, g), "stop_sequence": None},
             "usage": _usage_extras(g, {**usage, **delta_usage}) if g.compaction_usage else delta_usage}
    if g.applied_edits:
        delta["context_management"] = {"applied_edits": g.applied_edits}
    out.append(_sse("message_delta", delta))
    out.append(_sse("message_stop", {"type": "message_stop"}))
    return out


def _stop(plan: _Plan, g: provider_cm.Managed) -> str:
    return "compaction" if g.paused else "tool_use" if plan.tool else "end_turn"


def anthropic_message(si: StandIn, body: dict, decoded: bytes) -> dict:
    plan, g = _anthropic_managed(si, body, decoded)
    content: list[dict] = [dict(g.block)] if g.block is not None else []
    if plan.thinking:
        content.append({"type": "thinking", "thinking": plan.thinking, "signature": thinking_signature(plan.thinking)})
    if plan.text:
        content.append({"type": "text", "text": plan.text})
    if plan.tool:
        tid, name, tinput = plan.tool
        content.append({"type": "tool_use", "id": tid, "name": name, "input": tinput})
    usage = _anthropic_usage(si, body, decoded, g)
    usage["output_tokens"] = _out_tokens(plan)
    out = {"id": _id("msg_"), "type": "message", "role": "assistant", "model": body.get("model") or "claude-sonnet-4-6",
           "content": content, "stop_reason": _stop(plan, g), "stop_sequence": None, "usage": _usage_extras(g, usage)}
    if g.applied_edits:
        out["context_management"] = {"applied_edits": g.applied_edits}
    return out


def _openai_usage(si: StandIn, body: dict, decoded: bytes, plan: _Plan, responses: bool) -> dict:
    est = _estimate_tokens(decoded)
    first = (body.get("messages") or body.get("input") or [None])
    first = first[0] if isinstance(first, list) and first else first
    _, read = si._cache_usage(json.dumps([first, body.get("tools")], sort_keys=True).encode(), est, est >= 1024)
    out = _out_tokens(plan)
    if responses:
        return {"input_tokens": est, "input_tokens_details": {"cached_tokens": read}, "output_tokens": out,
                "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": est + out}
    return {"prompt_tokens": est, "completion_tokens": out, "total_tokens": est + out,
            "prompt_tokens_details": {"cached_tokens": read, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def chat_completion(si: StandIn, body: dict, decoded: bytes) -> dict:
    plan = _openai_chat_plan(si, body)
    message: dict[str, Any] = {"role": "assistant", "content": plan.text or None, "refusal": None}
    if plan.tool:
        tid, name, tinput = plan.tool
        message["tool_calls"] = [{"id": tid, "type": "function", "function": {"name": name, "arguments": json.dumps(tinput)}}]
    return {"id": _id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model") or "gpt-4o", "system_fingerprint": "fp_standin",
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if plan.tool else "stop"}],
            "usage": _openai_usage(si, body, decoded, plan, responses=False)}


def chat_chunks(si: StandIn, body: dict, decoded: bytes) -> list[bytes]:
    plan = _openai_chat_plan(si, body)
    base = {"id": _id("chatcmpl-"), "object": "chat.completion.chunk", "created": int(time.time()),
            "model": body.get("model") or "gpt-4o", "system_fingerprint": "fp_standin"}

    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None, choices: bool = True) -> bytes:
        d = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []}
        if usage is not None or (body.get("stream_options") or {}).get("include_usage"):
            d["usage"] = usage
        return _sse(None, d)

    out = [chunk({"role": "assistant", "content": "", "refusal": None})]
    for piece in _chunks(plan.text) if plan.text else []:
        out.append(chunk({"content": piece}))
    if plan.tool:
        tid, name, tinput = plan.tool
        out.append(chunk({"tool_calls": [{"index": 0, "id": tid, "type": "function",
                                          "function": {"name": name, "arguments": ""}}]}))
        for piece in _chunks(json.dumps(tinput), 2):
            out.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
    out.append(chunk({}, "tool_calls" if plan.tool else "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        out.append(chunk({}, usage=_openai_usage(si, body, decoded, plan, responses=False), choices=False))
    out.append(_sse(None, "[DONE]"))
    return out


def _responses_output(plan: _Plan) -> list[dict]:
    if plan.tool:
        tid, name, tinput = plan.tool
        return [{"type": "function_call", "id": _id("fc_"), "call_id": tid, "name": name,
                 "arguments": json.dumps(tinput), "status": "completed"}]
    return [{"type": "message", "id": _id("msg_"), "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": plan.text, "annotations": []}]}]


def _response_obj(body: dict, status: str, output: list, usage: dict | None, rid: str) -> dict:
    return {"id": rid, "object": "response", "created_at": int(time.time()), "status": status, "error": None,
            "incomplete_details": None, "instructions": body.get("instructions"), "max_output_tokens": None,
            "model": body.get("model") or "gpt-4o", "output": output, "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"), "temperature": 1.0, "tool_choice": "auto",
            "tools": body.get("tools") or [], "top_p": 1.0, "truncation": "disabled", "usage": usage,
            "metadata": {}, "store": bool(body.get("store", True))}


def _compaction_first(si: StandIn, body: dict, decoded: bytes) -> list[dict]:
    """The provider's compaction item, first in the output, when it compacts (provider_cm)."""
    return [provider_cm.compaction_item(si)] if provider_cm.responses_compacts(body, _estimate_tokens(decoded)) else []


def _trigger_only(body: dict) -> bool:
    items = body.get("input")
    return isinstance(items, list) and bool(items) and isinstance(items[-1], dict) and items[-1].get("type") == "compaction_trigger"


def response_json(si: StandIn, body: dict, decoded: bytes) -> dict:
    plan = _responses_plan(si, body)
    first = _compaction_first(si, body, decoded)
    output = first + ([] if _trigger_only(body) else _responses_output(plan))
    return _response_obj(body, "completed", output, _openai_usage(si, body, decoded, plan, True), _id("resp_"))


def response_events(si: StandIn, body: dict, decoded: bytes) -> list[bytes]:
    plan = _responses_plan(si, body)
    rid = _id("resp_")
    seq = itertools.count()
    out = []

    def ev(kind: str, **data) -> None:
        out.append(_sse(kind, {"type": kind, "sequence_number": next(seq), **data}))

    ev("response.created", response=_response_obj(body, "in_progress", [], None, rid))
    ev("response.in_progress", response=_response_obj(body, "in_progress", [], None, rid))
    first = _compaction_first(si, body, decoded)
    for cmp in first:  # the compaction item: added, compacting, done (its content only in done)
        ev("response.output_item.added", output_index=0, item={"type": "compaction", "id": cmp["id"]})
        ev("response.compaction.compacting", item_id=cmp["id"], output_index=0)
        ev("response.output_item.done", output_index=0, item=cmp)
    if first and _trigger_only(body):
        ev("response.completed", response=_response_obj(body, "completed", first,
                                                         _openai_usage(si, body, decoded, plan, True), rid))
        return out
    oi = len(first)
    item = _responses_output(plan)[0]
    if plan.tool:
        ev("response.output_item.added", output_index=oi, item={**item, "arguments": "", "status": "in_progress"})
        for piece in _chunks(item["arguments"], 2):
            ev("response.function_call_arguments.delta", item_id=item["id"], output_index=oi, delta=piece)
        ev("response.function_call_arguments.done", item_id=item["id"], output_index=oi, arguments=item["arguments"])
    else:
        ev("response.output_item.added", output_index=oi, item={**item, "content": [], "status": "in_progress"})
        part = {"type": "output_text", "text": "", "annotations": []}
        ev("response.content_part.added", item_id=item["id"], output_index=oi, content_index=0, part=part)
        for piece in _chunks(plan.text):
            ev("response.output_text.delta", item_id=item["id"], output_index=oi, content_index=0, delta=piece, logprobs=[])
        ev("response.output_text.done", item_id=item["id"], output_index=oi, content_index=0, text=plan.text, logprobs=[])
        ev("response.content_part.done", item_id=item["id"], output_index=oi, content_index=0,
           part={**part, "text": plan.text})
    ev("response.output_item.done", output_index=oi, item=item)
    ev("response.completed", response=_response_obj(body, "completed", first + [item],
                                                     _openai_usage(si, body, decoded, plan, True), rid))
    return out


def _error(api: str, status: int, message: str) -> dict:
    if api == "openai":
        kind = {429: "rate_limit_exceeded", 500: "server_error", 400: "invalid_request_error"}.get(status, "error")
        return {"error": {"message": message, "type": kind if status != 429 else "requests", "param": None, "code": kind}}
    kind = {429: "rate_limit_error", 500: "api_error", 400: "invalid_request_error", 404: "not_found_error",
            529: "overloaded_error"}.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": _id("req_")}


# -- the strict check (StandIn.strict) -------------------------------------------------------


def _blank(text: Any) -> bool:
    return not isinstance(text, str) or not text.strip()


def _anthropic_problems(body: dict, signed_thinking: bool = False) -> list[str]:
    """What the real Messages API rejects with a 400, checked independently of the proxy's validator."""
    problems: list[str] = []
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return ["messages: at least one message is required"]
    breakpoints = 0
    system = body.get("system")
    for part in ([system] if isinstance(system, dict) else system if isinstance(system, list) else []) + list(body.get("tools") or []):
        if isinstance(part, dict) and isinstance(part.get("cache_control"), dict):
            breakpoints += 1
    conv: list[tuple[int, dict]] = []  # user/assistant messages; role `system` ones may sit anywhere
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            problems.append(f"messages.{i}: not an object")
            continue
        role, content = m.get("role"), m.get("content")
        if role not in ("user", "assistant", "system"):
            problems.append(f"messages.{i}.role: unexpected role {role!r}")
        if isinstance(content, str):
            if _blank(content):
                problems.append(f"messages.{i}: text content blocks must be non-empty")
        elif isinstance(content, list):
            if not content:
                problems.append(f"messages.{i}: all messages must have non-empty content")
            for j, b in enumerate(content):
                if not isinstance(b, dict):
                    problems.append(f"messages.{i}.content.{j}: not an object")
                    continue
                if isinstance(b.get("cache_control"), dict):
                    breakpoints += 1
                t = b.get("type")
                if t == "text" and _blank(b.get("text")):
                    problems.append(f"messages.{i}.content.{j}: text content blocks must be non-empty")
                if t == "tool_use" and not isinstance(b.get("input"), dict):
                    problems.append(f"messages.{i}.content.{j}.input: Input should be a valid dictionary")
                if t == "thinking" and b.get("signature") != thinking_signature(str(b.get("thinking", ""))) \
                        and str(b.get("signature", "")).startswith("c3RhbmRp"):  # one of ours, changed
                    problems.append(f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block")
        else:
            problems.append(f"messages.{i}.content: Input should be a valid list or string")
        if role in ("user", "assistant"):
            conv.append((i, m))
    if breakpoints > 4:
        problems.append(f"A maximum of 4 blocks with cache_control may be provided. Found {breakpoints}.")
    if conv and conv[0][1].get("role") != "user":
        problems.append(f"messages.{conv[0][0]}: the first message must use the `user` role")

    def blocks(m: dict, kind: str) -> list[dict]:
        c = m.get("content")
        return [b for b in c if isinstance(b, dict) and b.get("type") == kind] if isinstance(c, list) else []

    for (i, a), (k, b) in zip(conv, conv[1:]):
        if a.get("role") == b.get("role"):
            problems.append(f"messages.{k}: roles must alternate between `user` and `assistant` (two `{b.get('role')}` at {i},{k})")
    for n, (i, m) in enumerate(conv):
        prev = conv[n - 1][1] if n else None
        nxt = conv[n + 1][1] if n + 1 < len(conv) else None
        if m.get("role") == "assistant":
            uses = [u.get("id") for u in blocks(m, "tool_use")]
            answered = {r.get("tool_use_id") for r in blocks(nxt, "tool_result")} if nxt and nxt.get("role") == "user" else set()
            missing = [u for u in uses if u not in answered]
            if missing and nxt is not None:
                problems.append(f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: {', '.join(map(str, missing))}")
        for r in blocks(m, "tool_result"):
            issued = {u.get("id") for u in blocks(prev, "tool_use")} if prev and prev.get("role") == "assistant" else set()
            if r.get("tool_use_id") not in issued:
                problems.append(f"messages.{i}: unexpected `tool_use_id` found in `tool_result` blocks: {r.get('tool_use_id')}. "
                                "Each `tool_result` block must have a corresponding `tool_use` block in the previous message.")
            if m.get("role") != "user":
                problems.append(f"messages.{i}: `tool_result` blocks are only allowed in user messages")
    # with thinking on, the assistant message a tool loop continues must still start with its thinking block
    th = body.get("thinking")
    if signed_thinking and isinstance(th, dict) and th.get("type") in ("enabled", "adaptive") and len(conv) >= 2:
        (i, a), (_, u) = conv[-2], conv[-1]
        if a.get("role") == "assistant" and blocks(a, "tool_use") and blocks(u, "tool_result"):
            first = a["content"][0] if isinstance(a.get("content"), list) and a["content"] else {}
            if not isinstance(first, dict) or first.get("type") not in ("thinking", "redacted_thinking"):
                problems.append(f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                                f"`{first.get('type') if isinstance(first, dict) else first}`. When `thinking` is enabled, "
                                "a final `assistant` message must start with a thinking block.")
    return problems


def _chat_problems(body: dict) -> list[str]:
    problems: list[str] = []
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return ["messages: at least one message is required"]
    pending: set[Any] = set()
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            problems.append(f"messages[{i}]: not an object")
            continue
        role = m.get("role")
        if role == "tool":
            if m.get("tool_call_id") not in pending:
                problems.append(f"messages[{i}]: messages with role 'tool' must be a response to a preceding message with 'tool_calls'")
            pending.discard(m.get("tool_call_id"))
            continue
        if pending:
            problems.append(f"messages[{i}]: an assistant message with 'tool_calls' must be followed by tool messages "
                            f"responding to each 'tool_call_id' ({', '.join(sorted(pending))})")
            pending = set()
        content = m.get("content")
        if role == "assistant" and m.get("tool_calls"):
            pending = {tc.get("id") for tc in m["tool_calls"] if isinstance(tc, dict)}
        elif content is None or (isinstance(content, (str, list)) and not content):
            problems.append(f"messages[{i}].content: empty content")
    if pending and msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") != "assistant":
        problems.append("tool_calls without a response")
    return problems


def _responses_problems(body: dict) -> list[str]:
    inp = body.get("input")
    if not isinstance(inp, list):
        return []
    problems, calls = [], set()
    for i, it in enumerate(inp):
        if not isinstance(it, dict):
            continue
        t = it.get("type")
        if isinstance(t, str) and t.endswith("_call"):
            calls.add(it.get("call_id"))
        elif isinstance(t, str) and t.endswith("_call_output") and it.get("call_id") not in calls:
            problems.append(f"input[{i}]: No tool call found for function call output with call_id {it.get('call_id')}.")
        elif it.get("role") and it.get("content") in (None, "", []):
            problems.append(f"input[{i}].content: empty content")
    return problems


def strict_problems(route: str, body: dict, signed_thinking: bool = False) -> list[str]:
    """What the real API would answer with a 400 for this body (the checks ``StandIn.strict`` applies):
    Anthropic: every ``tool_result`` answers a ``tool_use`` of the previous assistant message and every
    ``tool_use`` is answered in the next user message, user/assistant alternate starting with ``user``
    (role ``system`` messages may sit anywhere, as Claude Code sends them), no empty content or text
    block, a ``tool_use`` input is an object, at most 4 ``cache_control`` blocks, and every thinking block
    the stand-in signed comes back unchanged. OpenAI: tool messages answer the preceding ``tool_calls``,
    and each call is answered; Responses: every call output has its call. ``signed_thinking`` (the
    stand-in answers with thinking): the assistant message a tool loop continues starts with a thinking block."""
    if route == "/v1/messages":
        return _anthropic_problems(body, signed_thinking)
    if route == "/v1/chat/completions":
        return _chat_problems(body)
    if route == "/v1/responses":
        return _responses_problems(body)
    return []


# -- the handler -----------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    standin: StandIn
    protocol_version = "HTTP/1.1"
    server_version = "standin/1"
    # headers and body are separate writes: with Nagle's algorithm on, the body waits ~40 ms for the
    # peer's delayed ACK, which would swamp every latency figure
    disable_nagle_algorithm = True

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        self._handle()

    do_GET = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_POST

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self) -> None:
        si = self.standin
        headers = [(k, v) for k, v in self.headers.items()]
        body = self._read_body()
        rec = Recorded(self.command, self.path, headers, body, time.time())
        route = rec.route.rstrip("/")
        api = "openai" if route in ("/v1/chat/completions", "/v1/responses", "/v1/responses/compact") else "anthropic"
        rec.modes = si._modes_for(headers, self.command == "POST" and route in ("/v1/messages", "/v1/chat/completions", "/v1/responses"))
        si._record(rec)
        try:
            self._answer(si, rec, route, api)
        except _Dropped:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            rec.t_done = time.time()

    def _answer(self, si: StandIn, rec: Recorded, route: str, api: str) -> None:
        modes = rec.modes
        if "429" in modes:
            return self._json(rec, 429, _error(api, 429, "Number of request tokens has exceeded your rate limit."),
                              extra=[("retry-after", si.retry_after),
                                     ("anthropic-ratelimit-requests-remaining", "0") if api == "anthropic"
                                     else ("x-ratelimit-remaining-requests", "0")])
        if "500" in modes:
            return self._json(rec, 500, _error(api, 500, "Internal server error"))
        if self.command == "GET" and route == "/v1/models":
            return self._json(rec, 200, {"data": [{"type": "model", "id": "claude-sonnet-4-6", "display_name": "Claude Sonnet 4.6",
                                                   "created_at": "2025-09-29T00:00:00Z"}],
                                         "has_more": False, "first_id": "claude-sonnet-4-6", "last_id": "claude-sonnet-4-6"})
        if self.command == "HEAD":
            return self._json(rec, 200, {})
        if self.command != "POST" or route not in ("/v1/messages", "/v1/messages/count_tokens", "/v1/chat/completions", "/v1/responses",
                                                   "/v1/responses/compact"):
            return self._json(rec, 404, _error(api, 404, f"Not found: {self.command} {route}"))
        try:
            decoded = decode_content(rec.body, rec.header("content-encoding"))
            body = json.loads(decoded)
            if not isinstance(body, dict):
                raise ValueError("the body is not a JSON object")
        except Exception as e:  # what the real APIs do with a body they cannot read
            return self._json(rec, 400, _error(api, 400, f"Invalid request body: {type(e).__name__}"))
        if route == "/v1/messages/count_tokens":
            return self._json(rec, 200, {"input_tokens": _estimate_tokens(decoded)})
        if si.strict:
            rec.problems = strict_problems(route, body, signed_thinking=si.thinking)
            rec.problems += (provider_cm.anthropic_problems(si, body, rec.header("anthropic-beta") or "")
                             if api == "anthropic" else provider_cm.responses_problems(si, body))
            if rec.problems:
                return self._json(rec, 400, _error(api, 400, rec.problems[0]))
        if route == "/v1/messages" and si.window is not None and _estimate_tokens(decoded) > si.window:
            return self._json(rec, 400, _error(api, 400, f"prompt is too long: {_estimate_tokens(decoded)} tokens > {si.window} maximum"))
        if route == "/v1/responses/compact":
            return self._json(rec, 200, provider_cm.compacted_response(si, body, _openai_usage(si, body, decoded, _Plan(text=provider_cm.SUMMARY), True)))
        stream = bool(body.get("stream"))
        if route == "/v1/messages":
            if stream:
                return self._sse(rec, anthropic_events(si, body, decoded))
            return self._json(rec, 200, anthropic_message(si, body, decoded))
        if route == "/v1/chat/completions":
            if stream:
                return self._sse(rec, chat_chunks(si, body, decoded))
            return self._json(rec, 200, chat_completion(si, body, decoded))
        if stream:
            return self._sse(rec, response_events(si, body, decoded))
        return self._json(rec, 200, response_json(si, body, decoded))

    def _encoding(self, rec: Recorded) -> str | None:
        return next((m for m in rec.modes if m in ("gzip", "zstd")), None)

    def _head(self, rec: Recorded, status: int, headers: list[tuple[str, str]]) -> None:
        headers = [("Server", self.version_string()), ("Date", self.date_time_string()), *headers]
        rec.status = status
        rec.response_headers = headers
        self.send_response_only(status)
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.flush()

    def _write(self, rec: Recorded, data: bytes, chunked: bool) -> None:
        rec.response_body.extend(data)
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        self.wfile.flush()

    def _json(self, rec: Recorded, status: int, obj: Any, extra: tuple[tuple[str, str], ...] | list[tuple[str, str]] = ()) -> None:
        enc = self._encoding(rec)
        data = _Encoder(enc).whole(json.dumps(obj).encode())
        headers = [("Content-Type", "application/json"), ("request-id", _id("req_")), *extra]
        if enc:
            headers.append(("Content-Encoding", enc))
        self._head(rec, status, headers + [("Content-Length", str(len(data)))])
        if self.command == "HEAD":
            return
        if "drop" in rec.modes:
            self._write(rec, data[: len(data) // 2], chunked=False)
            raise _Dropped()
        self._write(rec, data, chunked=False)

    def _sse(self, rec: Recorded, events: list[bytes]) -> None:
        si = self.standin
        enc = self._encoding(rec)
        encoder = _Encoder(enc)
        delay = si.sse_delay
        override = rec.header("x-standin-delay-ms")
        if override:
            delay = float(override) / 1000
        headers = [("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache"),
                   ("request-id", _id("req_"))]
        if enc:
            headers.append(("Content-Encoding", enc))
        self._head(rec, 200, headers + [("Transfer-Encoding", "chunked")])
        for i, ev in enumerate(events):
            if i and delay:
                time.sleep(delay)
            if "drop" in rec.modes and i == si.drop_after_events:
                raise _Dropped()
            data = encoder.piece(ev)
            rec.event_times.append(time.time())
            if data:
                self._write(rec, data, chunked=True)
        tail = encoder.end()
        if tail:
            self._write(rec, tail, chunked=True)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
