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

from mitmproxy import connection, http

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


def encode(op: str, key: Any = None, payload: Any = None) -> tuple[bytes, bytes]:
    """A frame as its length and its pickle: written with ``writelines`` (one ``sendmsg``), the pickle
    of a ~600 KB request is not copied once more to join them."""
    data = pickle.dumps((op, key, payload), protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)), data


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
    sock.sendall(b"".join(encode(op, key, payload)))


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


def flow_state(flow: http.HTTPFlow) -> dict[str, Any]:
    """What the engine's copy of a flow (:func:`mirror`) is made of: its id, metadata, request and the
    client's address. Not the connections' whole state: rebuilding a ``Client`` and a ``Server`` from
    theirs was most of a mirror's cost (~0.8 ms of a 150K-token request in the engine)."""
    return {"id": flow.id, "peer": flow.client_conn.peername, "metadata": flow.metadata,
            "request": flow.request.get_state()}


def mirror(state: dict[str, Any]) -> http.HTTPFlow:
    """The engine's copy of a flow from its :func:`flow_state`."""
    flow = http.HTTPFlow(connection.Client(peername=state["peer"], sockname=("", 0)), connection.Server(address=None))
    flow.id, flow.metadata = state["id"], state["metadata"]
    flow.request = http.Request.from_state(state["request"])
    return flow
