"""A write-through, in-process cache over the runtime's :class:`~contextwarden.state.StateStore`.

The pruning stages read a session's decisions on every request. SQLite is the source of truth (so
decisions survive restarts), but a read or write per request costs milliseconds on a busy disk; this
keeps the recent records in memory, reads SQLite only on a miss, and can keep a value in memory only
(``persist=False``) for bookkeeping that need not survive a restart.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any

_MISSING = object()
_caches: "weakref.WeakKeyDictionary[Any, StateCache]" = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


class StateCache:
    def __init__(self, state, max_entries: int = 20_000) -> None:
        self.state = state
        self.max_entries = max_entries
        self._d: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ns: str, key: str, default: Any = None) -> Any:
        k = (ns, key)
        with self._lock:
            v = self._d.get(k, _MISSING)
            if v is not _MISSING:
                self._d.move_to_end(k)
                return default if v is None else v
        v = self.state.get(ns, key)
        self._remember(k, v)
        return default if v is None else v

    def put(self, ns: str, key: str, value: Any, persist: bool = True) -> None:
        self._remember((ns, key), value)
        if persist:
            self.state.put(ns, key, value)

    def _remember(self, k: tuple[str, str], v: Any) -> None:
        with self._lock:
            self._d[k] = v
            self._d.move_to_end(k)
            while len(self._d) > self.max_entries:
                self._d.popitem(last=False)


def state_cache(runtime) -> StateCache:
    """The cache of ``runtime.state`` (one per Runtime; a new Runtime reads SQLite afresh)."""
    c = _caches.get(runtime)
    if c is None or c.state is not runtime.state:
        with _caches_lock:
            c = _caches.get(runtime)
            if c is None or c.state is not runtime.state:
                c = _caches[runtime] = StateCache(runtime.state)
    return c
