"""Incremental Content-Encoding decoders: gzip, deflate, br, zstd; identity passes bytes through.

Each decoder takes compressed chunks as they arrive and returns what they decompress to, so nothing
waits for the end of the stream. ``Content-Encoding: gzip, br`` lists codings in the order they were
applied; they are undone in reverse.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Protocol

import brotli
import zstandard


class Decoder(Protocol):
    def decompress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class Identity:
    def decompress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


class Gzip:
    """gzip, including streams of several members (a server that gzips each flush separately)."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def decompress(self, data: bytes) -> bytes:
        out = self._d.decompress(data)
        while self._d.eof and self._d.unused_data:
            rest = self._d.unused_data
            if not rest.startswith(b"\x1f\x8b"):  # trailing padding after the last member
                break
            self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += self._d.decompress(rest)
        return out

    def flush(self) -> bytes:
        return self._d.flush()


class Deflate:
    """HTTP "deflate" is meant to be zlib-wrapped, but some servers send raw deflate: the first two
    bytes tell which (a zlib header's CMF is 8 in its low nibble and CMF*256+FLG is a multiple of 31)."""

    def __init__(self) -> None:
        self._d: zlib._Decompress | None = None
        self._head = b""

    def decompress(self, data: bytes) -> bytes:
        if self._d is None:
            self._head += data
            if len(self._head) < 2:
                return b""
            cmf, flg = self._head[0], self._head[1]
            zlib_wrapped = cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0
            self._d = zlib.decompressobj(zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS)
            data, self._head = self._head, b""
        return self._d.decompress(data)

    def flush(self) -> bytes:
        return b"" if self._d is None else self._d.flush()  # (None: fewer than two bytes in all, not enough to be anything)


class Brotli(Identity):  # (Identity's flush: brotli and zstd hold nothing back at the end)
    def __init__(self) -> None:
        self._d = brotli.Decompressor()

    def decompress(self, data: bytes) -> bytes:
        return self._d.process(data)


class Zstd(Identity):
    def __init__(self) -> None:
        # read_across_frames: a stream compressed flush by flush is several frames
        self._d = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)

    def decompress(self, data: bytes) -> bytes:
        return self._d.decompress(data)


class Chain:
    def __init__(self, decoders: list[Decoder]) -> None:
        self._decoders = decoders

    def decompress(self, data: bytes) -> bytes:
        for d in self._decoders:
            data = d.decompress(data)
        return data

    def flush(self) -> bytes:
        # what an outer decoder releases at the end still has to pass through the inner ones
        out = b""
        for d in self._decoders:
            out = (d.decompress(out) if out else b"") + d.flush()
        return out


_DECODERS: dict[str, Callable[[], Decoder]] = {"gzip": Gzip, "x-gzip": Gzip, "deflate": Deflate, "br": Brotli, "zstd": Zstd}


class UnsupportedEncoding(ValueError):
    pass


def make_decoder(content_encoding: str | None) -> Decoder:
    """The decoder for a Content-Encoding header value; raises UnsupportedEncoding for unknown codings."""
    decoders: list[Decoder] = []
    for c in reversed([c.strip().lower() for c in (content_encoding or "").split(",")]):
        if c and c != "identity":
            if c not in _DECODERS:
                raise UnsupportedEncoding(f"unsupported content-encoding {c!r}")
            decoders.append(_DECODERS[c]())
    return decoders[0] if len(decoders) == 1 else Chain(decoders)
