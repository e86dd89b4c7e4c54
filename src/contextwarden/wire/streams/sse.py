"""Incremental ``text/event-stream`` parser, per the WHATWG HTML spec (server-sent events).

Lines end in CRLF, LF or CR (a CRLF may be split across two chunks); a blank line dispatches the
event; ``data`` lines are joined with LF; ``event`` names it; lines starting with ``:`` are comments;
one space after the colon is dropped. Only the incomplete line and the current event's data lines
are held, so memory is bounded by the largest event and each character is scanned once.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Iterable

_EOL = re.compile(r"\r\n|\r|\n")


class EventTooLarge(ValueError):
    pass


class SSEParser:
    """Feed the stream's bytes with :meth:`feed` (UTF-8: a character split across two chunks is decoded
    whole); ``on_event(event_name, data)`` gets each dispatched event."""

    def __init__(self, on_event: Callable[[str | None, str], None], max_event_chars: int = 64 * 1024 * 1024) -> None:
        self._on_event = on_event
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._max = max_event_chars
        self._line: list[str] = []  # pieces of the line not yet ended
        self._data: list[str] = []  # data lines of the event not yet dispatched
        self._event: str | None = None
        self._line_len = 0  # characters in _line
        self._data_len = 0  # characters in _data
        self._skip_lf = False  # the last chunk ended in CR: a LF starting the next one belongs to it
        self._started = False
        # characters the line scanner looked at plus characters copied to join split lines: linear
        # work means this stays within a small multiple of the input (tests check it)
        self.work = 0

    @property
    def buffered(self) -> int:
        """Characters held for the incomplete line and event."""
        return self._line_len + self._data_len

    def feed(self, data: bytes) -> None:
        self._feed_text(self._utf8.decode(data))

    def _feed_text(self, text: str) -> None:
        if not self._started and text:
            self._started = True
            if text[0] == "\ufeff":  # a byte-order mark at the very start is not part of the stream
                text = text[1:]
        if self._skip_lf:
            self._skip_lf = False
            if text[:1] == "\n":
                text = text[1:]
        if not text:
            return
        self.work += len(text)
        # split in C: str.split when the chunk has no CR (the usual case), the regex otherwise
        lines = _EOL.split(text) if "\r" in text else text.split("\n")
        rest = lines.pop()
        if lines:
            if self._line:  # the first line began in earlier chunks
                self._line.append(lines[0])
                lines[0] = "".join(self._line)
                self.work += len(lines[0])
                self._line.clear()
                self._line_len = 0
            # a CR ending the chunk may be the first half of a CRLF
            self._skip_lf = text[-1] == "\r"
            self._process_lines(lines)
        if rest:
            self._line.append(rest)
            self._line_len += len(rest)
            if self._line_len + self._data_len > self._max:
                raise EventTooLarge(f"an SSE event larger than {self._max} characters")

    def flush(self) -> None:
        """The stream ended. The spec drops an event without its closing blank line; we dispatch it,
        because servers that omit the final blank line would otherwise lose their last event
        (``[DONE]``, ``message_stop``); a line cut in half then simply fails to parse."""
        self._feed_text(self._utf8.decode(b"", final=True))
        if self._line:
            line = "".join(self._line)
            self._line.clear()
            self._line_len = 0
            self._process_lines((line, ""))
        else:
            self._process_lines(("",))

    def _process_lines(self, lines: Iterable[str]) -> None:
        """Each line of the stream, in order. The two lines every event has (``data:`` and the blank line
        ending it) are handled here, without a call: a chunk read in one go (deferred reading) holds many
        events, and a call per line was most of the parser's time."""
        data = self._data
        for line in lines:
            if line.startswith("data:"):  # the common case first
                value = line[6:] if line[5:6] == " " else line[5:]
                data.append(value)
                self._data_len += len(value)
                if self._line_len + self._data_len > self._max:
                    raise EventTooLarge(f"an SSE event larger than {self._max} characters")
            elif line:
                self._field(line)
            elif data:  # the blank line ending an event with data: dispatch it
                joined = data[0] if len(data) == 1 else "\n".join(data)
                event = self._event
                data.clear()
                self._data_len = 0
                self._event = None
                self._on_event(event, joined)
            else:
                self._event = None  # an event without data is not dispatched; its name does not carry over

    def _field(self, line: str) -> None:
        """A line other than ``data: ...`` and the blank one: a comment, or a field."""
        if line[0] == ":":
            return
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":  # "data" without a colon: an empty data line
            self._data.append(value)
        elif field == "event":
            self._event = value
        # id and retry only matter to a client that reconnects; other fields are ignored per the spec
