"""A write-through, in-process cache over the runtime's state store (:mod:`contextwarden.store.state`):
the recent records in memory, the store read only on a miss; ``persist=False`` keeps a value in memory
only. With a shared backend (Redis) every ``get`` reads the stored bytes and the memory only saves
decoding them again (the very object decoded before when the bytes are unchanged: stages compare these
by identity), and everything is written. ``put(soon=True)`` writes a local store's value together with the
others put so, in one transaction at most ``WRITE_EVERY_S`` later (a timer's, or the next such put's; and at
:meth:`flush`, when the runtime closes): the memory stage's ingestion marker, one a turn, no longer waits for the store's lock, which every
request's own writes take (docs/benchmarks.md, "Fresh under a starved CPU"). :meth:`view` keeps a value's typed
form while the value is the same object: a record read every request is parsed once it changes.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ..util.lru import LRU

WRITE_EVERY_S = 1.0  # put(soon=True): the values wait at most this long
_GET = object()  # view(): the value read from the cache


class StateCache:
    def __init__(self, state, max_entries: int = 20_000) -> None:
        self.state = state
        self.shared = bool(getattr(state, "shared", False))
        # (ns, key) -> (value, the stored bytes it was decoded from, or None)
        self._lru = LRU(max_entries)
        self._views = LRU(max_entries // 20)  # (ns, key) -> (the value, its typed form): view()
        self._soon: dict[tuple[str, str], Any] = {}  # put(soon=True) values not written yet
        self._soon_lock = threading.Lock()
        self._flush_lock = threading.Lock()  # (one flush at a time: an older value never lands after a newer)
        self._flushed = time.monotonic()
        self._armed = False  # a timer will flush what waits

    def get(self, ns: str, key: str, default: Any = None) -> Any:
        k = (ns, key)
        if self.shared:
            blob = self.state.load(ns, key)
            e = self._lru.peek(k)
            if blob is None:
                v = None
            elif e is not None and e[1] == blob:
                v = e[0]
            else:
                v = self.state.decode(blob)
            self._lru.put(k, (v, blob))
        else:
            v = self._lru.get(k, self._stored, ns, key)[0]
        return default if v is None else v

    def _stored(self, ns: str, key: str) -> tuple[Any, None]:
        """A miss: the value still waiting to be written (put soon, gone from memory since), else the store's."""
        with self._soon_lock:
            v = self._soon.get((ns, key))
        return (self.state.get(ns, key) if v is None else v), None

    def put(self, ns: str, key: str, value: Any, persist: bool = True, soon: bool = False) -> None:
        """``soon``: written with the other values put so (see the module docstring); a shared store is
        written at once all the same (other replicas read it)."""
        if self.shared:
            blob = self.state.encode(value)
            self.state.store(ns, key, blob)
            self._lru.put((ns, key), (value, blob))
            return
        self._lru.put((ns, key), (value, None))
        if persist and soon:
            with self._soon_lock:
                self._soon[(ns, key)] = value
                due = time.monotonic() - self._flushed >= WRITE_EVERY_S
                arm = not due and not self._armed
                self._armed |= arm
            if due:
                self.flush()
            elif arm:  # written within WRITE_EVERY_S even when no other put comes (the proxy goes idle)
                timer = threading.Timer(WRITE_EVERY_S, self._on_timer)
                timer.daemon = True
                timer.start()
        elif persist:
            self.state.put(ns, key, value)

    def _on_timer(self) -> None:
        with self._soon_lock:
            self._armed = False
        self.flush()

    def flush(self) -> None:
        """Write the values ``put(soon=True)`` left waiting, in one transaction (each stays readable as
        waiting until it is written)."""
        with self._flush_lock:
            with self._soon_lock:
                batch = dict(self._soon)
                self._flushed = time.monotonic()
            if batch:
                self.state.update_many([(ns, key, lambda _cur, v=v: v) for (ns, key), v in batch.items()])
                with self._soon_lock:
                    for k, v in batch.items():
                        if self._soon.get(k) is v:  # (not put again meanwhile)
                            del self._soon[k]

    def view(self, ns: str, key: str, parse, value: Any = _GET) -> Any:
        """``parse(value)`` (by default the value :meth:`get` reads), remembered while the value is the very
        object parsed before: a record read every request is parsed once it changes, not each time."""
        v = self.get(ns, key) if value is _GET else value
        got = self._views.peek((ns, key))
        if got is not None and got[0] is v:
            return got[1]
        out = parse(v)
        self._views.put((ns, key), (v, out))
        return out

    def update(self, ns: str, key: str, fn) -> Any:
        """``fn(current)`` stored atomically (see the store's ``update``); returns what is stored."""
        v = self.state.update(ns, key, fn)
        self._lru.put((ns, key), (v, None))
        return v

    def update_many(self, updates: list[tuple[str, str, Any]]) -> list[Any]:
        """Each ``(ns, key, fn)`` as :meth:`update`, in order, in one transaction of the store."""
        vs = self.state.update_many(updates)
        for (ns, key, _), v in zip(updates, vs):
            self._lru.put((ns, key), (v, None))
        return vs


def state_cache(runtime) -> StateCache:
    """The cache of ``runtime.state``: the runtime's own (a new Runtime reads the store afresh)."""
    return runtime.memo("state", lambda: StateCache(runtime.state))
