"""What goes over the memory service's socket: frames of a 4-byte length and a pickle.

The two ends are the proxy and the memory process it started, on a Unix socket of mode 0600 in a
private folder: only this user (who can run code as itself anyway) can connect, so a frame carries any
picklable object as it is (``MemoryItem``, ``Query``, ``Retrieval``, settings, the memory stage's
``HistoryIndex`` and its ``__contains__``). Something that cannot be pickled is a TypeError in the
sender's thread, before anything is sent. Errors travel as their type's name and message.
"""

from __future__ import annotations

import collections
import pickle
import socket
import struct
import threading
from contextlib import nullcontext
from typing import Any

MAX_FRAME = 256 * 1024 * 1024
_HEADER = struct.Struct("!I")


# --- framing ------------------------------------------------------------------------------------------
def frame_bytes(obj: Any) -> bytes:
    """``obj`` as one frame: its length, then its pickle (ValueError past MAX_FRAME)."""
    try:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError) as e:  # (a lambda, a local class: as unsendable as a lock)
        raise TypeError(f"cannot send to the memory service: {e}") from None
    if len(data) > MAX_FRAME:
        raise ValueError(f"frame of {len(data)} bytes is over {MAX_FRAME}")
    return _HEADER.pack(len(data)) + data


def send_frame(sock: socket.socket, obj: Any, lock: threading.Lock | None = None) -> None:
    buf = frame_bytes(obj)
    with lock or nullcontext():
        sock.sendall(buf)


class Outbox:
    """Frames to one socket, written in order by a thread of its own (``cw-memory-writer``), so that a
    stage never waits for the socket's buffer while the memory process reads late. A frame is encoded by
    its caller (errors are the caller's) and queued; past ``max_bytes`` queued, :meth:`put` says False
    (not sent: a submit goes again with the next turn, a search fails open). A write error closes the
    outbox: every later put raises OSError."""

    def __init__(self, sock: socket.socket, max_bytes: int = 64 << 20) -> None:
        self.sock = sock
        self.max_bytes = max_bytes
        self._q: collections.deque[bytes] = collections.deque()
        self._bytes = 0
        self._cv = threading.Condition()
        self._closed = False
        self._error: OSError | None = None
        threading.Thread(target=self._run, name="cw-memory-writer", daemon=True).start()

    def put(self, obj: Any) -> bool:
        buf = frame_bytes(obj)
        with self._cv:
            if self._error is not None or self._closed:
                raise self._error or OSError("the connection is closed")
            if self._bytes + len(buf) > self.max_bytes:
                return False
            self._q.append(buf)
            self._bytes += len(buf)
            self._cv.notify()
        return True

    @property
    def queued(self) -> int:
        """Bytes waiting to be written."""
        return self._bytes

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._q and not self._closed:
                    self._cv.wait()
                if not self._q:
                    return
                buf = self._q[0]
            try:
                self.sock.sendall(buf)
            except OSError as e:
                with self._cv:
                    self._error = e
                    self._q.clear()
                    self._bytes = 0
                return
            with self._cv:
                self._q.popleft()
                self._bytes -= len(buf)

    def close(self) -> None:
        """What is queued is still written (unless the socket is closed); nothing more is taken."""
        with self._cv:
            self._closed = True
            self._cv.notify()


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks = []
    while n:
        b = sock.recv(min(n, 1 << 20))
        if not b:
            return None
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> Any:
    """The next frame, or None when the peer closed."""
    head = _recv_exact(sock, _HEADER.size)
    if head is None:
        return None
    (n,) = _HEADER.unpack(head)
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes is over {MAX_FRAME}")
    body = _recv_exact(sock, n)
    return None if body is None else pickle.loads(body)


# --- errors ------------------------------------------------------------------------------------------
def encode_error(e: BaseException) -> dict:
    return {"type": type(e).__name__, "message": str(e)}


_ERRORS = {c.__name__: c for c in (TimeoutError, ValueError, TypeError, KeyError, RuntimeError, AttributeError,
                                   ConnectionError, NotImplementedError, LookupError, OSError)}


def decode_error(d: dict) -> BaseException:
    cls = _ERRORS.get(str(d.get("type")), RuntimeError)
    msg = d.get("message", "")
    return cls(msg if cls is not RuntimeError or d.get("type") == "RuntimeError" else f"{d.get('type')}: {msg}")
