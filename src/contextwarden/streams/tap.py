"""ResponseTap: reads a response on the side while its bytes stream to the client unchanged.

The proxy hands every chunk to :meth:`ResponseTap.feed` on the event loop, so feeding does work
proportional to the chunk only and never raises: a reader error sets ``failed`` and the tap stops
reading (the client is unaffected). The framing comes from the Content-Type (SSE, NDJSON, or one JSON
body read at the end), the event shapes from the API.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from typing import Any

import orjson

from contextwarden.models.base import ApiKind

from .assembler import Assembler
from .decoding import Decoder, make_decoder
from .ndjson import LineSplitter
from .sse import SSEParser
from .turn import AssembledTurn

MAX_BODY = 64 * 1024 * 1024  # a whole (non-SSE) body larger than this is not read

_NDJSON_TYPES = {"application/x-ndjson", "application/ndjson", "application/jsonl",
                 "application/x-jsonlines", "application/jsonlines"}

class BodyTooLarge(ValueError):
    pass


class ResponseTap:
    """Incremental reader of one response; :meth:`finish` returns the :class:`AssembledTurn`.

    ``on_event(event)`` is called once per parsed event: each SSE ``data`` JSON, each NDJSON line, or
    a whole JSON body once at finish. Its exceptions are swallowed (the caller reports its own).
    """

    def __init__(self, api: ApiKind, content_type: str, content_encoding: str | None,
                 on_event: Callable[[dict], None] | None) -> None:
        mime = (content_type or "").split(";", 1)[0].strip().lower()
        self.api = api
        self.is_sse = mime == "text/event-stream"
        self.is_ndjson = mime in _NDJSON_TYPES
        self.on_event = on_event
        self.failed: str | None = None
        self.events = 0  # JSON events handed to the assembler
        self.skipped = 0  # events that were not JSON objects or did not fit the API's shapes
        self.last_skip: str | None = None  # why the last one was skipped
        self._turn: AssembledTurn | None = None
        self._asm: Assembler | None = None
        self._decoder: Decoder | None = None
        self._sse: SSEParser | None = None
        self._text: codecs.IncrementalDecoder | None = None
        self._lines: LineSplitter | None = None
        self._body: bytearray | None = None
        try:
            from ..dialects import dialect

            self._asm = dialect(api).assembler()  # the dialect's assembler
            self._decoder = make_decoder(content_encoding)
            if self.is_sse:
                # incremental: a multi-byte character split across two chunks is decoded whole
                self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
                self._sse = SSEParser(self._on_sse)
            elif self.is_ndjson:
                self._lines = LineSplitter(self._on_line)
            else:
                self._body = bytearray()
        except Exception as e:
            self._fail(e)

    # -- diagnostics -----------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Characters (SSE) or bytes (NDJSON, whole body) held for what is not complete yet."""
        if self._sse is not None:
            return self._sse.buffered
        if self._lines is not None:
            return self._lines.buffered
        return len(self._body) if self._body is not None else 0

    @property
    def work(self) -> int:
        """Characters the SSE scanner examined or copied; linear reading keeps it near the input size."""
        return self._sse.work if self._sse is not None else 0

    # -- input -----------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        """Read one chunk of the response as sent (still content-encoded). Never raises."""
        if self.failed is not None or self._turn is not None:
            return
        try:
            data = self._decoder.decompress(chunk)
            if data:
                self._consume(data)
        except Exception as e:
            self._fail(e)

    def feed_message(self, data: bytes | str) -> None:
        """Read one message that is already framed (a Responses WebSocket message: the JSON an SSE
        ``data`` line would carry). Never raises."""
        if self.failed is not None or self._turn is not None or self._asm is None:
            return
        try:
            self._on_line(data)  # one JSON document, like an NDJSON line
        except Exception as e:
            self._fail(e)

    def finish(self, error: str | None = None) -> AssembledTurn:
        """The response ended (``error``: the connection failed). Idempotent: later calls return the
        same turn. Never raises."""
        if self._turn is not None:
            return self._turn
        if self.failed is None:
            try:
                self._drain()
            except Exception as e:
                self._fail(e)
        try:
            turn = self._asm.build() if self._asm is not None else None
        except Exception as e:
            self._fail(e)
            turn = None
        if turn is None:
            turn = AssembledTurn(api=self.api, model=None, message={}, text="", tool_calls=[], usage=None,
                                 stop_reason=None, error=None, complete=False, events=0)
        turn.events = self.events
        turn.skipped = self.skipped
        if error is not None and turn.error is None:
            # the provider's own error, when there is one, says more than the broken connection;
            # complete stays as it was: a message whose end we saw is whole even if the socket then broke
            turn.error = {"type": "connection", "message": str(error)}
        self._turn = turn
        self._sse = self._text = self._lines = self._body = None  # free what was held
        return turn

    # -- framing ---------------------------------------------------------------------------

    def _consume(self, data: bytes) -> None:
        if self._sse is not None:
            self._sse.feed(self._text.decode(data))
        elif self._lines is not None:
            self._lines.feed(data)
        elif self._body is not None:
            if len(self._body) + len(data) > MAX_BODY:
                raise BodyTooLarge(f"response body larger than {MAX_BODY} bytes")
            self._body += data

    def _drain(self) -> None:
        tail = self._decoder.flush() if self._decoder is not None else b""
        if tail:
            self._consume(tail)
        if self._sse is not None:
            self._sse.feed(self._text.decode(b"", final=True))
            self._sse.flush()
        elif self._lines is not None:
            self._lines.flush()
        elif self._body is not None:
            self._parse_body(self._body)  # orjson reads a bytearray as is: no 64 MB copy

    def _parse_body(self, raw: bytes | bytearray) -> None:
        if not raw.strip():
            return
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._sniff(raw)
            return
        self._deliver(None, obj, whole=True)

    def _sniff(self, raw: bytes | bytearray) -> None:
        """A body that is not one JSON document: an event stream or NDJSON behind the wrong Content-Type?"""
        head = raw.lstrip().removeprefix(b"\xef\xbb\xbf")
        if head.startswith((b"data:", b"event:", b":")):
            parser = SSEParser(self._on_sse)
            parser.feed(raw.decode("utf-8", errors="replace"))
            parser.flush()
            return
        first = head.split(b"\n", 1)[0]
        try:
            looks_ndjson = isinstance(orjson.loads(first), dict)
        except orjson.JSONDecodeError:
            looks_ndjson = False
        if looks_ndjson:
            lines = LineSplitter(self._on_line)
            lines.feed(raw)
            lines.flush()
        else:
            self._skip("response body is not JSON")

    def _on_sse(self, name: str | None, data: str) -> None:
        if data[:1] == "[" and data.strip() == "[DONE]":  # JSON events start with "{": one cheap check
            self._asm.done()
            return
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            self._skip(f"SSE data is not JSON: {e}")
            return
        self._deliver(name, obj, whole=False)

    def _on_line(self, line: bytes) -> None:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            self._skip(f"NDJSON line is not JSON: {e}")
            return
        self._deliver(None, obj, whole=False)

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
        try:
            self.failed = f"{type(e).__name__}: {e}"
        except Exception:
            self.failed = type(e).__name__
        self._sse = self._text = self._lines = self._body = None
