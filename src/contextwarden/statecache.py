"""A write-through, in-process cache over the runtime's state store (:mod:`contextwarden.state`).

The pruning stages read a session's decisions on every request. The store is the source of truth (so
decisions survive restarts), but a read or write per request costs milliseconds on a busy disk; this
keeps the recent records in memory, reads the store only on a miss, and can keep a value in memory only
(``persist=False``) for bookkeeping that need not survive a restart.

With a shared backend (Redis: several replicas write the same sessions) a value in memory may be one
another replica has replaced since, and serving it would make this replica decide differently. The
rule there: every ``get`` reads the stored bytes (one round trip), and the memory only saves decoding
them again, returning the very object decoded before when the bytes are unchanged (stages that hand
work on from one request to the next compare these objects by identity). ``persist=False`` is ignored
(everything is written): a value only one replica knew would make the replicas' decisions differ.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any

_MISSING = object()
_caches: weakref.WeakKeyDictionary[Any, StateCache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


class StateCache:
    def __init__(self, state, max_entries: int = 20_000) -> None:
        self.state = state
        self.shared = bool(getattr(state, "shared", False))
        self.max_entries = max_entries
        # (ns, key) -> (value, the stored bytes it was decoded from, or None)
        self._d: OrderedDict[tuple[str, str], tuple[Any, bytes | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ns: str, key: str, default: Any = None) -> Any:
        k = (ns, key)
        if self.shared:
            blob = self.state.load(ns, key)
            with self._lock:
                e = self._d.get(k)
            if blob is None:
                v = None
            elif e is not None and e[1] == blob:
                v = e[0]
            else:
                v = self.state.decode(blob)
            self._remember(k, v, blob)
            return default if v is None else v
        with self._lock:
            e = self._d.get(k, _MISSING)
            if e is not _MISSING:
                self._d.move_to_end(k)
                return default if e[0] is None else e[0]
        v = self.state.get(ns, key)
        self._remember(k, v)
        return default if v is None else v

    def put(self, ns: str, key: str, value: Any, persist: bool = True) -> None:
        if self.shared:
            blob = self.state.encode(value)
            self.state.store(ns, key, blob)
            self._remember((ns, key), value, blob)
            return
        self._remember((ns, key), value)
        if persist:
            self.state.put(ns, key, value)

    def update(self, ns: str, key: str, fn) -> Any:
        """``fn(current)`` stored atomically (see the store's ``update``); returns what is stored."""
        v = self.state.update(ns, key, fn)
        self._remember((ns, key), v)
        return v

    def update_many(self, updates: list[tuple[str, str, Any]]) -> list[Any]:
        """Each ``(ns, key, fn)`` as :meth:`update`, in order, in one transaction of the store."""
        vs = self.state.update_many(updates)
        for (ns, key, _), v in zip(updates, vs):
            self._remember((ns, key), v)
        return vs

    def _remember(self, k: tuple[str, str], v: Any, blob: bytes | None = None) -> None:
        with self._lock:
            self._d[k] = (v, blob)
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
