"""One bounded memo for every cache of the proxy: least recently used out first.

Per-message work (a message's digest, the validator's facts about it, a text's secret scrub, a lost
text's terms) is a pure function of its key, and a long conversation sends the same messages again
with every request. :class:`LRU` remembers it, bounded by a count or by a size per key (``size=len``:
the bytes of the keys it keeps). Keyed by the exact value (Python's hash, then an equality check), it
can never answer for another key: what some of these values guard (a wrong fact could let an invalid
body through) must not rest on a hash alone.

Every instance belongs to a runtime (``Runtime.memo(name, factory)``), never to a module, so two
runtimes in one process share nothing (``tests/test_runtime_state.py``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class LRU:
    """``get(key, compute)``: the remembered value, else ``compute()`` remembered. Bounded by
    ``max_size``, counting ``size(key)`` per key (1 by default). Keys whose size is below ``min_size``
    (cheaper to compute again than to keep) or above ``max_item`` are not kept. Values are never None."""

    def __init__(self, max_size: int, size: Callable[[Any], int] | None = None, min_size: int = 0,
                 max_item: int | None = None) -> None:
        self.max_size = max_size
        self.size = size
        self.min_size = min_size
        self.max_item = max_item if max_item is not None else max_size
        self._d: OrderedDict[Hashable, Any] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def peek(self, key: Hashable) -> Any:
        """The value held for ``key`` (None when absent), without counting it as a use."""
        with self._lock:
            return self._d.get(key)

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
                return v
        v = compute()
        self.put(key, v)
        return v

    def put(self, key: Hashable, v: Any) -> None:
        n = self.size(key) if self.size is not None else 1
        if n < self.min_size or n > self.max_item or v is None:
            return
        with self._lock:
            if key in self._d:
                self._d[key] = v
                self._d.move_to_end(key)
                return
            self._d[key] = v
            self._total += n
            while self._total > self.max_size and self._d:
                k, _ = self._d.popitem(last=False)
                self._total -= self.size(k) if self.size is not None else 1

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self._total = 0

    def __len__(self) -> int:
        return len(self._d)


class BytesMemo(LRU):
    """An :class:`LRU` keyed by exact bytes, bounded by the bytes of its keys (an eighth of the bound
    at most per key)."""

    def __init__(self, max_bytes: int = 32_000_000, min_key: int = 0) -> None:
        super().__init__(max_bytes, size=len, min_size=min_key, max_item=max_bytes // 8)

    @property
    def max_bytes(self) -> int:
        return self.max_size
