"""ResponseTap: reads a response on the side while its bytes stream to the client unchanged.

Feeding never raises: a reader error sets ``failed`` and the tap stops reading. The framing comes from
the Content-Type (SSE, NDJSON, or one JSON body read at the end), the event shapes from the API.
Unless someone reads the events live (``on_event``, ``live=True``), a stream's chunks are only appended
on the event loop and read in batches of ``BATCH`` wire bytes, the last by :meth:`finish`, off the loop
(bench/tap_bench.py); batches go through the same incremental reader as chunks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from contextwarden.models.base import ApiKind

from ..dialects import dialect
from .assembler import Assembler
from .decoding import Decoder, Identity, make_decoder
from .ndjson import LineSplitter
from .sse import SSEParser
from .turn import AssembledTurn

MAX_BODY = 64 * 1024 * 1024  # a whole (non-SSE) body larger than this is not read
# deferred reading: wire bytes held before they are read in one go. Bounds what a long stream holds
# (a stream read live holds one event) and the loop's pause to read them (~1 ms a 256 KB batch)
BATCH = 256 * 1024

_NDJSON_TYPES = {"application/x-ndjson", "application/ndjson", "application/jsonl",
                 "application/x-jsonlines", "application/jsonlines"}


class BodyTooLarge(ValueError):
    pass


class _Body:
    """The framing of a whole (non-stream) body: held, and read at the end."""

    def __init__(self, on_body: Callable[[bytearray], None]) -> None:
        self.data = bytearray()
        self._on_body = on_body

    @property
    def buffered(self) -> int:
        return len(self.data)

    def feed(self, data: bytes) -> None:
        if len(self.data) + len(data) > MAX_BODY:
            raise BodyTooLarge(f"response body larger than {MAX_BODY} bytes")
        self.data += data

    def flush(self) -> None:
        self._on_body(self.data)  # orjson reads a bytearray as is: no 64 MB copy


class ResponseTap:
    """Incremental reader of one response; :meth:`finish` returns the :class:`AssembledTurn`.

    ``on_event(event)`` is called once per parsed event: each SSE ``data`` JSON, each NDJSON line, or
    a whole JSON body once at finish. Its exceptions are swallowed (the caller reports its own). With
    ``on_event`` (or ``live=True``) a stream is read as each chunk comes; without, its chunks are held
    and read in batches of at least ``batch`` wire bytes (module doc). A whole body is read at finish
    either way.
    """

    def __init__(self, api: ApiKind, content_type: str, content_encoding: str | None,
                 on_event: Callable[[dict[str, Any]], None] | None, *, live: bool | None = None,
                 batch: int = BATCH) -> None:
        mime = (content_type or "").split(";", 1)[0].strip().lower()
        self.api = api
        self.is_sse = mime == "text/event-stream"
        self.is_ndjson = mime in _NDJSON_TYPES
        self.on_event = on_event
        live = on_event is not None if live is None else live
        # the chunks not read yet (deferred reading), None once reading is live, finished or failed
        self._pending: list[bytes] | None = [] if not live and (self.is_sse or self.is_ndjson) else None
        self._pending_len = 0
        self._batch = batch
        self._encoding = content_encoding
        self.failed: str | None = None
        self.events = 0  # JSON events handed to the assembler
        self.skipped = 0  # events that were not JSON objects or did not fit the API's shapes
        self.last_skip: str | None = None  # why the last one was skipped
        self._turn: AssembledTurn | None = None
        self._asm: Assembler = dialect(api).new_assembler()
        self._decoder: Decoder = Identity()
        self._framer: SSEParser | LineSplitter | _Body | None = None  # built with the first batch, off the loop
        if self._pending is None:
            self._setup()

    def _setup(self) -> None:
        try:
            self._decoder = make_decoder(self._encoding)
            self._framer = SSEParser(self._on_sse) if self.is_sse else LineSplitter(self._on_line) \
                if self.is_ndjson else _Body(self._parse_body)
        except Exception as e:
            self._fail(e)

    @property
    def buffered(self) -> int:
        """Characters (SSE) or bytes (NDJSON, whole body) held for what is not complete yet, plus the
        wire bytes not read yet."""
        return (self._framer.buffered if self._framer is not None else 0) + self._pending_len

    @property
    def work(self) -> int:
        """Characters the SSE scanner examined or copied; linear reading keeps it near the input size."""
        return self._framer.work if isinstance(self._framer, SSEParser) else 0

    def feed(self, chunk: bytes) -> None:
        """Read one chunk of the response as sent (still content-encoded), or hold it for a later batch.
        Never raises."""
        pending = self._pending
        if pending is not None:  # deferred: the loop's whole share, most of the time
            pending.append(chunk)
            self._pending_len += len(chunk)
            if self._pending_len >= self._batch:
                self._read_pending(pending)
        elif self._framer is not None and self._turn is None:
            self._read(self._framer, chunk)

    def _read_pending(self, pending: list[bytes]) -> None:
        """Read the chunks held so far, in one go."""
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self._pending_len = 0
        if self._framer is None:
            self._setup()
        if self._framer is not None:
            self._read(self._framer, data)

    def _read(self, framer: SSEParser | LineSplitter | _Body, chunk: bytes) -> None:
        try:
            data = self._decoder.decompress(chunk)
            if data:
                framer.feed(data)
        except Exception as e:
            self._fail(e)

    def feed_message(self, data: bytes | str) -> None:
        """Read one message that is already framed (a Responses WebSocket message: the JSON an SSE
        ``data`` line would carry). Never raises."""
        if self.failed is None and self._turn is None:
            self._on_line(data)  # one JSON document, like an NDJSON line

    def finish(self, error: str | None = None) -> AssembledTurn:
        """The response ended (``error``: the connection failed). Idempotent: later calls return the
        same turn. Never raises."""
        if self._turn is not None:
            return self._turn
        if self._pending is not None:
            self._read_pending(self._pending)
        framer = self._framer
        if framer is not None:
            try:
                tail = self._decoder.flush()
                if tail:
                    framer.feed(tail)
                framer.flush()
            except Exception as e:
                self._fail(e)
        try:
            turn = self._asm.build()
        except Exception as e:
            self._fail(e)
            turn = AssembledTurn(api=self.api, model=None, message={}, text="", tool_calls=[], usage=None,
                                 stop_reason=None, error=None, complete=False, events=0)
        turn.events = self.events
        turn.skipped = self.skipped
        if error is not None and turn.error is None:
            # the provider's own error, when there is one, says more than the broken connection;
            # complete stays as it was: a message whose end we saw is whole even if the socket then broke
            turn.error = {"type": "connection", "message": str(error)}
        self._turn = turn
        self._framer = self._pending = None  # free what was held
        self._pending_len = 0
        return turn

    # -- events ----------------------------------------------------------------------------

    def _parse_body(self, raw: bytearray) -> None:
        if not raw.strip():
            return
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._sniff(bytes(raw))
            return
        self._deliver(None, obj, whole=True)

    def _sniff(self, raw: bytes) -> None:
        """A body that is not one JSON document: an event stream or NDJSON behind the wrong Content-Type?"""
        head = raw.lstrip().removeprefix(b"\xef\xbb\xbf")
        try:
            looks_ndjson = isinstance(orjson.loads(head.split(b"\n", 1)[0]), dict)
        except orjson.JSONDecodeError:
            looks_ndjson = False
        framer = SSEParser(self._on_sse) if head.startswith((b"data:", b"event:", b":")) \
            else LineSplitter(self._on_line) if looks_ndjson else None
        if framer is None:
            self._skip("response body is not JSON")
            return
        framer.feed(raw)
        framer.flush()

    def _on_sse(self, name: str | None, data: str) -> None:
        if data[:1] == "[" and data.strip() == "[DONE]":  # JSON events start with "{": one cheap check
            self._asm.done()
        else:
            self._on_json(data, name, "SSE data")

    def _on_line(self, line: bytes | str) -> None:
        self._on_json(line, None, "NDJSON line")

    def _on_json(self, data: bytes | str, name: str | None, what: str) -> None:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            self._skip(f"{what} is not JSON: {e}")
            return
        self._deliver(name, obj, whole=False)

    def _deliver(self, name: str | None, obj: Any, whole: bool) -> None:
        if not isinstance(obj, dict):
            self._skip(f"event is a JSON {type(obj).__name__}, not an object")
            return
        try:
            if whole:
                self._asm.body(obj)
            else:
                self._asm.event(name, obj)
            self.events += 1
        except Exception as e:  # a shape this reader did not expect: lose the event, not the stream
            self._skip(f"{type(e).__name__}: {e}")
        if self.on_event is not None:
            try:
                self.on_event(obj)
            except Exception:
                pass  # the hook's failure is the caller's to report; the reader goes on

    def _skip(self, reason: str) -> None:
        self.skipped += 1
        self.last_skip = reason

    def _fail(self, e: BaseException) -> None:
        self.failed = f"{type(e).__name__}: {e}"
        self._framer = self._pending = None
        self._pending_len = 0
