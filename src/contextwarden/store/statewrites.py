"""What ``update`` last wrote per key, so that the next ``update`` of that key need not decode it again.

A session's clearing records are read, merged and written back on every request that adds one (issue
19): decoding the stored records (and opening their seal) grew with the session. The stored bytes are
still read inside the transaction (another process on the same file may have written since); only when
they are exactly the bytes this process wrote is the value it wrote used instead of decoding them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..util.lru import LRU

KEYS = 512  # keys remembered (least recently updated out): the sessions being worked on


class LastWritten:
    def __init__(self, keys: int = KEYS) -> None:
        self._lru = LRU(keys)

    def current(self, ns: str, key: str, stored: bytes | None, decode: Callable[[bytes], Any]) -> Any:
        """The value of the ``stored`` bytes (None when nothing is stored)."""
        if stored is None:
            return None
        stored = bytes(stored)
        known = self._lru.peek((ns, key))
        if known is not None and known[0] == stored:
            return known[1]
        return decode(stored)

    def wrote(self, ns: str, key: str, blob: bytes, value: Any) -> None:
        self._lru.put((ns, key), (blob, value))
