"""What goes over the memory service's socket: length-prefixed JSON frames, and a codec that carries
the objects the service's methods take and return as plain data.

The codec is generic on purpose: any method of :class:`~contextwarden.memory.service.MemoryService`
works through the client, whatever it takes and returns, as long as that is made of JSON values,
tuples, sets, bytes, numpy arrays, dataclasses and pydantic models of ``contextwarden`` (rebuilt by
class name on the other side: ``MemoryItem``, ``Query``, ``Retrieval``, ``Hit``, settings sections) and
:class:`~contextwarden.memory.retrieve.HistoryIndex` (or its ``__contains__``, the ``exclude`` the memory
stage passes). Anything else is refused with a TypeError naming it, before anything is sent.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import importlib
import socket
import struct
import threading
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel

from .retrieve import HistoryIndex

MAX_FRAME = 256 * 1024 * 1024
_HEADER = struct.Struct("!I")
_TRUSTED = "contextwarden."


# --- framing ------------------------------------------------------------------------------------------
def frame_bytes(obj: Any) -> bytes:
    """``obj`` as one frame: its length, then its JSON (ValueError past MAX_FRAME)."""
    data = orjson.dumps(obj)
    if len(data) > MAX_FRAME:
        raise ValueError(f"frame of {len(data)} bytes is over {MAX_FRAME}")
    return _HEADER.pack(len(data)) + data


def send_frame(sock: socket.socket, obj: Any, lock: threading.Lock | None = None) -> None:
    buf = frame_bytes(obj)
    if lock is None:
        sock.sendall(buf)
    else:
        with lock:
            sock.sendall(buf)


class Outbox:
    """Frames to one socket, written in order by a thread of its own (``cw-memory-writer``), so that a
    stage never waits for the socket's buffer while the memory process reads late. A frame is encoded by
    its caller (errors are the caller's) and queued; past ``max_bytes`` queued, :meth:`put` says False
    (not sent: a submit goes again with the next turn, a search fails open). A write error closes the
    outbox: every later put raises OSError."""

    def __init__(self, sock: socket.socket, max_bytes: int = 64 << 20, name: str = "cw-memory-writer") -> None:
        self.sock = sock
        self.max_bytes = max_bytes
        self._q: collections.deque[bytes] = collections.deque()
        self._bytes = 0
        self._cv = threading.Condition()
        self._closed = False
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

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
    if body is None:
        return None
    return orjson.loads(body)


# --- codec --------------------------------------------------------------------------------------------
def _name(cls) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve(name: str):
    mod, _, qual = name.partition(":")
    if not (mod + ".").startswith(_TRUSTED):
        raise TypeError(f"refusing to rebuild {name}: not a contextwarden class")
    obj = importlib.import_module(mod)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


_ENC_CACHE: dict[int, tuple[Any, dict]] = {}  # id -> (the object, kept alive so the id stays its, its encoding)
_MODEL_CACHE: dict[tuple[str, bytes], Any] = {}  # settings come with every search: validated once
_MODEL_LOCK = threading.Lock()


def encode(obj: Any) -> Any:
    """``obj`` as JSON-able data (see the module's docstring)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        return [encode(v) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: encode(v) for k, v in obj.items()}
        return {"$D": [[encode(k), encode(v)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"$T": [encode(v) for v in obj]}
    if isinstance(obj, (set, frozenset)):
        return {"$S": [encode(v) for v in obj]}
    if isinstance(obj, (bytes, bytearray)):
        return {"$B": base64.b64encode(bytes(obj)).decode()}
    if isinstance(obj, np.ndarray):
        return {"$A": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, HistoryIndex):
        return {"$H": [list(obj.hashes), list(obj.lines)]}
    if getattr(obj, "__func__", None) is HistoryIndex.__contains__ and isinstance(obj.__self__, HistoryIndex):
        return {"$Hc": [list(obj.__self__.hashes), list(obj.__self__.lines)]}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"$C": _name(type(obj)),
                "v": {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}}
    if isinstance(obj, BaseModel):
        # settings go with every search: dumped once per settings object (they are replaced, not edited)
        with _MODEL_LOCK:
            hit = _ENC_CACHE.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        enc = {"$P": _name(type(obj)), "v": obj.model_dump(mode="json")}
        with _MODEL_LOCK:
            if len(_ENC_CACHE) > 16:
                _ENC_CACHE.clear()
            _ENC_CACHE[id(obj)] = (obj, enc)
        return enc
    raise TypeError(f"cannot send {type(obj).__name__} to the memory service")




def decode(obj: Any) -> Any:
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) <= 2:
        if "$T" in obj:
            return tuple(decode(v) for v in obj["$T"])
        if "$S" in obj:
            return set(decode(v) for v in obj["$S"])
        if "$D" in obj:
            return {_hashable(decode(k)): decode(v) for k, v in obj["$D"]}
        if "$B" in obj:
            return base64.b64decode(obj["$B"])
        if "$A" in obj:
            return np.asarray(obj["$A"], dtype=obj.get("dtype") or None)
        if "$H" in obj or "$Hc" in obj:
            h = HistoryIndex()
            hashes, lines = obj.get("$H") or obj["$Hc"]
            h.hashes, h.lines = set(hashes), set(lines)
            return h if "$H" in obj else h.__contains__
        if "$C" in obj:
            cls = _resolve(obj["$C"])
            return cls(**{k: decode(v) for k, v in obj["v"].items()})
        if "$P" in obj:
            key = (obj["$P"], orjson.dumps(obj["v"], option=orjson.OPT_SORT_KEYS))
            with _MODEL_LOCK:
                hit = _MODEL_CACHE.get(key)
            if hit is None:
                hit = _resolve(obj["$P"]).model_validate(obj["v"])
                with _MODEL_LOCK:
                    if len(_MODEL_CACHE) > 64:
                        _MODEL_CACHE.clear()
                    _MODEL_CACHE[key] = hit
            return hit
    return {k: decode(v) for k, v in obj.items()}


def _hashable(v):
    return tuple(_hashable(x) for x in v) if isinstance(v, list) else v


def encode_error(e: BaseException) -> dict:
    return {"type": type(e).__name__, "message": str(e)}


_ERRORS = {c.__name__: c for c in (TimeoutError, ValueError, TypeError, KeyError, RuntimeError, AttributeError,
                                   ConnectionError, NotImplementedError, LookupError, OSError)}


def decode_error(d: dict) -> BaseException:
    cls = _ERRORS.get(str(d.get("type")), RuntimeError)
    msg = d.get("message", "")
    return cls(msg if cls is not RuntimeError or d.get("type") == "RuntimeError" else f"{d.get('type')}: {msg}")
