"""A memo of values computed from exact bytes, keyed by those bytes, bounded by the bytes it keeps.

Per-message work (a message's digest, the validator's facts about it) is a pure function of the
message's JSON bytes, and a long conversation sends the same messages again with every request. A
dictionary keyed by the bytes themselves (Python's hash, then a memcmp) answers for a fraction of
the work, and can never answer for other bytes: what these values guard (a wrong fact could let an
invalid body through) must not rest on a hash alone.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable


class BytesMemo:
    """Least recently used out first, once the keys it keeps pass ``max_bytes``. Keys shorter than
    ``min_key`` (cheaper to compute again than to keep) or longer than an eighth of the bound are not
    kept. Values are never None."""

    def __init__(self, max_bytes: int = 32_000_000, min_key: int = 0) -> None:
        self.max_bytes = max_bytes
        self.min_key = min_key
        self._d: OrderedDict[bytes, Any] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: bytes, compute: Callable[[], Any]) -> Any:
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
                return v
        v = compute()
        if len(key) < self.min_key or len(key) > self.max_bytes // 8:
            return v
        with self._lock:
            if key not in self._d:
                self._d[key] = v
                self._bytes += len(key)
                while self._bytes > self.max_bytes and self._d:
                    k, _ = self._d.popitem(last=False)
                    self._bytes -= len(k)
        return v

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self._bytes = 0
