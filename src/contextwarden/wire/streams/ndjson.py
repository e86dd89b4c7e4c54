"""Splits a newline-delimited JSON byte stream into lines, holding only the incomplete last line.

Splitting bytes (not text) is safe: in UTF-8 the byte 0x0A only ever encodes LF, never part of a
multi-byte character, and orjson parses each line's bytes directly.
"""

from __future__ import annotations

from collections.abc import Callable


class LineTooLong(ValueError):
    pass


class LineSplitter:
    def __init__(self, on_line: Callable[[bytes], None], max_line: int = 64 * 1024 * 1024) -> None:
        self._on_line = on_line
        self._max = max_line
        self._pending: list[bytes] = []
        self._held = 0

    @property
    def buffered(self) -> int:
        return self._held

    def feed(self, data: bytes) -> None:
        if b"\n" not in data:
            self._hold(data)
            return
        lines = data.split(b"\n")
        if self._pending:
            self._pending.append(lines[0])
            lines[0] = b"".join(self._pending)
            self._pending.clear()
            self._held = 0
        for line in lines[:-1]:
            self._line(line)
        self._hold(lines[-1])

    def flush(self) -> None:
        if self._pending:
            line = b"".join(self._pending)
            self._pending.clear()
            self._held = 0
            self._line(line)

    def _hold(self, piece: bytes) -> None:
        if piece:
            self._pending.append(piece)
            self._held += len(piece)
            if self._held > self._max:
                raise LineTooLong(f"an NDJSON line longer than {self._max} bytes")

    def _line(self, line: bytes) -> None:
        if line.strip():  # blank lines (and CRLF's CR) carry nothing
            self._on_line(line)
