"""Frames between mitmdump's process and the engine: a 4-byte big-endian length, then a pickle of
``(op, key, payload)``. The socket pair is made by mitmdump's process for its own child: nothing else
can write to it, so pickle carries no one else's data.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 30  # a request body of 1 GB is not a conversation
# A frame is a whole request (~600 KB at 150K tokens): with these it crosses in one or two turns of the loop
BUFFER = 4 << 20  # SO_SNDBUF / SO_RCVBUF asked for (the kernel caps it at net.core.[wr]mem_max)
READ_LIMIT = 16 << 20  # the StreamReader's limit: it reads on until this much waits unread


def tune(sock: socket.socket) -> None:
    """Large buffers on one end of the pair (the kernel may give less; nothing else changes)."""
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, BUFFER)
        except OSError:
            pass


async def open_stream(sock: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio's streams on one end of the pair, read in large steps."""
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock, limit=READ_LIMIT)
    # (asyncio's socket transport reads at most 256 KB a turn of the loop)
    if hasattr(writer.transport, "max_size"):
        writer.transport.max_size = BUFFER
    return reader, writer


def encode(op: str, key: Any = None, payload: Any = None) -> bytes:
    data = pickle.dumps((op, key, payload), protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


async def read(reader: asyncio.StreamReader) -> tuple[str, Any, Any] | None:
    """The next frame, or None at the end of the stream (the other process is gone)."""
    try:
        head = await reader.readexactly(HEADER.size)
        (n,) = HEADER.unpack(head)
        if n > MAX_FRAME:
            raise ValueError(f"engine frame of {n} bytes")
        frame: tuple[str, Any, Any] = pickle.loads(await reader.readexactly(n))
        return frame
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def send_blocking(sock: socket.socket, op: str, key: Any = None, payload: Any = None) -> None:
    sock.sendall(encode(op, key, payload))


def read_blocking(sock: socket.socket, timeout: float | None) -> tuple[str, Any, Any] | None:
    """One frame read before either side runs its event loop (the start-up handshake)."""
    sock.settimeout(timeout)
    try:
        head = _exactly(sock, HEADER.size)
        if head is None:
            return None
        (n,) = HEADER.unpack(head)
        body = _exactly(sock, n)
        return None if body is None else pickle.loads(body)
    finally:
        sock.settimeout(None)


def _exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            return None
        buf += part
    return bytes(buf)
