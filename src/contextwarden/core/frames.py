"""Frames between mitmdump's process and the engine: a 4-byte big-endian length, then a pickle of
``(op, key, payload)``. The socket pair is made by mitmdump's process for its own child: nothing else
can write to it, so pickle carries no one else's data.

A payload's large ``bytes`` (a request's body, its rewrite) go through a :class:`Ring` when there is
one (Linux): shared memory, one per direction, written and read in frame order; the frame carries
where. Through the socket a 600 KB body cost 1-5 ms a way on a loaded 2-core machine (the kernel's
buffers, the reader woken for each part), through the ring two copies of ~50 us.
"""

from __future__ import annotations

import asyncio
import io
import mmap
import os
import pickle
import socket
import struct
from contextlib import suppress
from typing import Any

from mitmproxy import connection, http

HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 30  # a request body of 1 GB is not a conversation
# A frame is a whole request (~600 KB at 150K tokens): with these it crosses in one or two turns of the loop
BUFFER = 4 << 20  # SO_SNDBUF / SO_RCVBUF asked for (the kernel caps it at net.core.[wr]mem_max)
READ_LIMIT = 16 << 20  # the StreamReader's limit: it reads on until this much waits unread
RING_BYTES = 4 << 20  # each direction's shared memory (its pages, once written, count in both processes' RSS)
RING_MIN = 32 << 10  # bytes objects from this size go through the ring; smaller ones in the frame
_TAIL = struct.Struct("=Q")  # the ring's first bytes: how far the reader has read (it writes, the writer reads)
_RING_DATA = 64  # where the ring's data starts
_RINGED = 1 << 31  # in a frame's length: its pickle refers to the ring


class Ring:
    """One direction's shared memory: a ring of ``size`` bytes on a memfd that both processes map. One
    writer (:meth:`put`, while encoding a frame) and one reader (:meth:`take`, while decoding it): the
    reader takes in the order the frames were written, so its position (the end of what it took) frees
    everything before it. What does not fit now goes in the frame instead."""

    def __init__(self, fd: int) -> None:
        self.fd = fd  # (to pass to the other process; the map stays once it is closed)
        self.map = mmap.mmap(fd, 0)
        self.size = len(self.map) - _RING_DATA
        self.head = 0  # the writer's position (bytes ever written, gaps included)

    @classmethod
    def create(cls, size: int = RING_BYTES) -> Ring | None:
        """A new ring (its ``fd`` to pass to the other process); None where there is no memfd."""
        make = getattr(os, "memfd_create", None)
        if make is None:
            return None
        try:
            fd = make("contextwarden-frames", getattr(os, "MFD_CLOEXEC", 0))
            os.ftruncate(fd, _RING_DATA + size)
            return cls(fd)
        except OSError:
            return None

    def put(self, data: bytes) -> tuple[int, int] | None:
        """``data`` written where the reader finds it: its (position, length); None when it does not fit."""
        n, start = len(data), self.head
        if n > self.size:
            return None
        at = start % self.size
        if at + n > self.size:  # a piece is one run of bytes: the end of the ring is skipped
            start += self.size - at
            at = 0
        if min(self.head, start + n - self.size) > _TAIL.unpack_from(self.map)[0]:
            return None  # it would overwrite what the reader has not read (between its position and ours)
        self.map[_RING_DATA + at:_RING_DATA + at + n] = data
        self.head = start + n
        return start, n

    def release(self) -> bool:
        """The writer's side, once the reader has taken everything: the ring's pages back to the system (they
        counted in both processes' RSS; the next frames fault in what they use). Whether it did."""
        if _TAIL.unpack_from(self.map)[0] != self.head or not hasattr(mmap, "MADV_REMOVE"):
            return False
        try:
            self.map.madvise(mmap.MADV_REMOVE, mmap.PAGESIZE, len(self.map) - mmap.PAGESIZE)  # (the tail's page stays)
        except OSError:  # (a kernel without it for this memory: the pages stay, as before)
            return False
        return True

    def take(self, where: tuple[int, int]) -> bytes:
        """The bytes :meth:`put` wrote at ``where`` (a copy); what came before is free again."""
        start, n = where
        at = _RING_DATA + start % self.size
        data = self.map[at:at + n]
        _TAIL.pack_into(self.map, 0, start + n)
        return data


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, ring: Ring) -> None:
        super().__init__(file, pickle.HIGHEST_PROTOCOL)
        self.ring = ring

    def persistent_id(self, obj: Any) -> tuple[int, int] | None:  # (called for every object pickled)
        return self.ring.put(obj) if type(obj) is bytes and len(obj) >= RING_MIN else None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, ring: Ring | None) -> None:
        super().__init__(file)
        self.ring = ring

    def persistent_load(self, pid: Any) -> bytes:
        if self.ring is None:
            raise pickle.UnpicklingError("a frame refers to a ring this side does not have")
        return self.ring.take(pid)


def tune(sock: socket.socket) -> None:
    """Large buffers on one end of the pair (the kernel may give less; nothing else changes)."""
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, BUFFER)


async def open_stream(sock: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio's streams on one end of the pair, read in large steps."""
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock, limit=READ_LIMIT)
    # (asyncio's socket transport reads at most 256 KB a turn of the loop)
    if hasattr(writer.transport, "max_size"):
        writer.transport.max_size = BUFFER
    return reader, writer


def encode(op: str, key: Any = None, payload: Any = None, ring: Ring | None = None) -> tuple[bytes, bytes]:
    """A frame as its length and its pickle (its large bytes in ``ring`` when given): written with
    ``writelines`` (one ``sendmsg``), a large pickle is not copied once more to join them. Write it
    before encoding the next one with the same ring: the reader takes from the ring in frame order."""
    if ring is None or not _large(payload):  # (most frames: a pickler of our own costs ~4x the pickle)
        data = pickle.dumps((op, key, payload), protocol=pickle.HIGHEST_PROTOCOL)
        return HEADER.pack(len(data)), data
    out = io.BytesIO()
    _Pickler(out, ring).dump((op, key, payload))
    data = out.getvalue()
    return HEADER.pack(len(data) | _RINGED), data


def _large(obj: Any, depth: int = 4) -> bool:
    """Whether ``obj`` holds a ``bytes`` the ring takes (within ``depth`` containers: a flow's state and
    a reply hold their bodies at depth 2 or 3). Looked for, not pickled: a throwaway pickle of a 600 KB
    body cost ~0.2 ms (more on a loaded machine) before the ring's pass."""
    t = type(obj)
    if t is bytes:
        return len(obj) >= RING_MIN
    if depth and t is dict:
        return any(_large(v, depth - 1) for v in obj.values())
    if depth and (t is list or t is tuple):
        return any(_large(v, depth - 1) for v in obj)
    return False


async def read(reader: asyncio.StreamReader, ring: Ring | None = None) -> tuple[str, Any, Any] | None:
    """The next frame (its large bytes taken from ``ring``), or None at the end of the stream (the
    other process is gone)."""
    try:
        head = await reader.readexactly(HEADER.size)
        (n,) = HEADER.unpack(head)
        ringed, n = n & _RINGED, n & ~_RINGED
        if n > MAX_FRAME:
            raise ValueError(f"engine frame of {n} bytes")
        data = await reader.readexactly(n)
        frame: tuple[str, Any, Any] = _Unpickler(io.BytesIO(data), ring).load() if ringed else pickle.loads(data)
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
    flow.request = message(http.Request, state["request"])
    return flow


def message[M: (http.Request, http.Response)](cls: type[M], state: dict[str, Any]) -> M:
    """A request or response (``cls``) from the ``get_state()`` mitmdump's process took of one: set from
    it, not constructed, since its fields were type-checked when that one was made (``from_state``
    checks every field again: ~0.1 ms of each request's way into the engine, as much for its answer)."""
    data = _DATA[cls]
    m = cls.__new__(cls)
    vars(m)["data"] = data.__new__(data)
    m.set_state(state)
    return m


_DATA: dict[type, type[http.MessageData]] = {http.Request: http.RequestData, http.Response: http.ResponseData}
