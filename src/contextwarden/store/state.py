"""Small persistent state (per-session decisions, budgets, calibration, run-time overrides and bypass):
decisions must survive a restart, or the next request would decide differently and re-write the
provider's cache.

Two backends behind one interface (``get``/``put``/``delete``/``items``, and ``update`` for
read-modify-write): SQLite under the data directory (the default) and Redis (``state.url =
redis://...``), which several proxies share. Values are JSON, sealed when a key is set (``sealing.py``).

On Redis: one string key per value (``<prefix>:<ns>:<key>``) and one set per namespace (for ``items``);
``update`` is compare-and-set with WATCH/MULTI, so two replicas deciding one session apply one decision.
A server that cannot be reached raises :class:`StateUnavailable` at once (the request goes out as
sent) and is not tried again for ``retry_s``. Going down and coming back are each reported once
(``error`` with ``where: "state"``, then ``state`` with ``status: "up"``).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, cast

import orjson

from ..settings import SettingsError
from ..util.lru import LRU
from ..util.sealing import Sealer, SealError

KEY_CHECK = ("_meta", "key_check")  # a sealed marker: a wrong or missing key is found at start-up


class StateUnavailable(RuntimeError):
    """The state backend cannot be reached (a shared server down): the request goes out unchanged."""


class Codec:
    """JSON values, sealed when a key is set. ``shared``: other processes write the same keys."""

    shared = False

    def __init__(self, sealer: Sealer | None = None) -> None:
        self.sealer = sealer or Sealer(None)

    def encode(self, value: Any) -> bytes:
        return self.sealer.seal(orjson.dumps(value, default=str))

    def decode(self, blob: bytes) -> Any:
        return orjson.loads(self.sealer.open(bytes(blob)))

    # the interface both backends implement on bytes
    def load(self, ns: str, key: str) -> bytes | None:
        raise NotImplementedError

    def store(self, ns: str, key: str, blob: bytes) -> None:
        raise NotImplementedError

    def get(self, ns: str, key: str, default: Any = None) -> Any:
        blob = self.load(ns, key)
        return self.decode(blob) if blob is not None else default

    def put(self, ns: str, key: str, value: Any) -> None:
        self.store(ns, key, self.encode(value))

    def update(self, ns: str, key: str, fn: Callable[[Any], Any]) -> Any:
        """Atomically replace the value with ``fn(current)`` (``current`` None when absent) and
        return what is stored after it. When ``fn`` returns ``current`` itself, nothing is written.
        ``fn`` may be called more than once (when another writer got in between): keep it pure."""
        return self.update_many([(ns, key, fn)])[0]

    def update_many(self, updates: list[tuple[str, str, Callable[[Any], Any]]]) -> list[Any]:
        """:meth:`update` of each ``(ns, key, fn)`` in order, in one transaction (a decision's records,
        the session's control record and its versions: one commit, not three). A later ``fn`` sees what
        an earlier one of the same key stored."""
        raise NotImplementedError

    def check_key(self) -> None:
        """Raise :class:`SealError` now when the stored data was sealed with another key (or with a
        key that is not set); stores the marker on first use of a key."""
        blob = self.load(*KEY_CHECK)
        if blob is None:
            if self.sealer.on:
                self.put(*KEY_CHECK, "ok")
            return
        self.decode(blob)  # raises SealError with the reason

    def ping(self) -> bool:
        return True

    def forget(self) -> None:
        """Drop what is remembered to save work (an idle proxy's memory falls back)."""

    def close(self) -> None:
        pass


class StateStore(Codec):
    """SQLite under cw_home."""

    def __init__(self, path: Path | str, sealer: Sealer | None = None) -> None:
        super().__init__(sealer)
        self.path = str(path)
        self.url = "sqlite:///" + self.path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (ns TEXT, key TEXT, value BLOB, updated REAL, PRIMARY KEY (ns, key))")
        # (ns, key) -> (the bytes this process last wrote there, their value): a session's records are
        # read, merged and written back on every request that adds one; what this process wrote itself
        # is not decoded again (the stored bytes are still read: another process may have written since)
        self._written = LRU(512)

    def _row(self, ns: str, key: str) -> bytes | None:
        """The stored bytes (the caller holds the lock)."""
        row = self._db.execute("SELECT value FROM kv WHERE ns=? AND key=?", (ns, key)).fetchone()
        return bytes(row[0]) if row else None

    def load(self, ns: str, key: str) -> bytes | None:
        with self._lock:
            return self._row(ns, key)

    def store(self, ns: str, key: str, blob: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO kv VALUES (?,?,?,?)", (ns, key, blob, time.time()))

    def update_many(self, updates: list[tuple[str, str, Callable[[Any], Any]]]) -> list[Any]:
        # One transaction for all: every commit saved is a wait saved for every request that writes state
        out: list[Any] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # also excludes other processes on this file
            try:
                now = time.time()
                for ns, key, fn in updates:
                    stored = self._row(ns, key)
                    known = self._written.peek((ns, key))
                    cur = known[1] if known is not None and known[0] == stored else \
                        None if stored is None else self.decode(stored)
                    new = fn(cur)
                    if new is not cur:
                        blob = self.encode(new)
                        self._db.execute("INSERT OR REPLACE INTO kv VALUES (?,?,?,?)", (ns, key, blob, now))
                        self._written.put((ns, key), (blob, new))
                    out.append(new)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")  # (what it remembered writing is not what is stored: decoded next time)
                raise
        return out

    def forget(self) -> None:
        self._written.clear()

    def delete(self, ns: str, key: str | None = None) -> None:
        with self._lock:
            if key is None:
                self._db.execute("DELETE FROM kv WHERE ns=?", (ns,))
            else:
                self._db.execute("DELETE FROM kv WHERE ns=? AND key=?", (ns, key))

    def items(self, ns: str) -> list[tuple[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM kv WHERE ns=? ORDER BY key", (ns,)).fetchall()
        return [(k, self.decode(v)) for k, v in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


RETRY_S = 1.0
MAX_CAS_TRIES = 50


class RedisStateStore(Codec):
    shared = True

    def __init__(self, url: str, sealer: Sealer | None = None, *, bus=None, prefix: str = "cw",
                 timeout_s: float = 0.5, retry_s: float = RETRY_S) -> None:
        import redis  # (the one lazy import: 0.25 s, only for a proxy whose state is on Redis)

        super().__init__(sealer)
        self.url = url
        self.bus = bus
        self.prefix = prefix
        self.retry_s = retry_s
        self._redis_errors = (redis.ConnectionError, redis.TimeoutError, OSError)
        self._watch_error = redis.WatchError
        self.r = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                      health_check_interval=0)
        self._down_since: float | None = None
        self._last_try = 0.0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ availability

    @property
    def available(self) -> bool:
        return self._down_since is None

    def _call(self, fn: Callable[[], Any]) -> Any:
        if self._down_since is not None and time.monotonic() - self._last_try < self.retry_s:
            raise StateUnavailable(f"state backend {self._where()} unreachable (since {self._down_for()})")
        try:
            out = fn()
        except self._redis_errors as e:
            self._failed(e)
            raise StateUnavailable(f"state backend {self._where()} unreachable: {e}") from None
        if self._down_since is not None:
            self._recovered()
        return out

    def _where(self) -> str:
        kw = self.r.connection_pool.connection_kwargs
        return f"{kw.get('host', kw.get('path', '?'))}:{kw.get('port', '')}".rstrip(":")

    def _down_for(self) -> str:
        return f"{time.monotonic() - (self._down_since or time.monotonic()):.1f} s"

    def _failed(self, e: Exception) -> None:
        with self._lock:
            self._last_try = time.monotonic()
            first = self._down_since is None
            if first:
                self._down_since = self._last_try
        if first and self.bus is not None:
            self.bus.emit("error", {"where": "state", "message": f"state backend {self._where()} unreachable: {e}",
                                    "action": "requests forwarded unchanged until it is back"})

    def _recovered(self) -> None:
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None and self.bus is not None:
            self.bus.emit("state", {"status": "up", "backend": self._where(),
                                    "down_s": round(time.monotonic() - since, 3)})

    def ping(self) -> bool:
        """Whether the server answers now (always tried, even while failing fast: readiness probes and
        the run-time sync use it, so a server that is back is noticed within a probe)."""
        self._last_try = 0.0
        try:
            return bool(self._call(self.r.ping))
        except StateUnavailable:
            return False

    # ------------------------------------------------------------------ the interface

    def _k(self, ns: str, key: str) -> str:
        return f"{self.prefix}:{ns}:{key}"

    def _idx(self, ns: str) -> str:
        return f"{self.prefix}:ns:{ns}"

    def load(self, ns: str, key: str) -> bytes | None:
        return self._call(lambda: self.r.get(self._k(ns, key)))

    def store(self, ns: str, key: str, blob: bytes) -> None:
        def go():
            p = self.r.pipeline(transaction=True)
            p.set(self._k(ns, key), blob)
            p.sadd(self._idx(ns), key)
            p.execute()
        self._call(go)

    def update_many(self, updates: list[tuple[str, str, Callable[[Any], Any]]]) -> list[Any]:
        """Every ``(ns, key, fn)`` in one MULTI, every key watched: decided again, all of them, when
        another writer got in between (one round trip for the reads, one for the writes)."""
        keys = [self._k(ns, key) for ns, key, _ in updates]

        def go():
            for _ in range(MAX_CAS_TRIES):
                with self.r.pipeline(transaction=True) as p:
                    try:
                        p.watch(*dict.fromkeys(keys))
                        stored = dict(zip(keys, p.mget(keys))) if keys else {}
                        now: dict[str, Any] = {}  # key -> its value so far in this batch
                        out, writes = [], {}
                        for k, (ns, key, fn) in zip(keys, updates):
                            cur = now[k] if k in now else (self.decode(cast(bytes, stored[k])) if stored[k] is not None else None)
                            new = fn(cur)
                            if new is not cur:
                                writes[k] = (ns, key, new)
                            now[k] = new
                            out.append(new)
                        if not writes:
                            p.unwatch()
                            return out
                        p.multi()
                        for k, (ns, key, new) in writes.items():
                            p.set(k, self.encode(new))
                            p.sadd(self._idx(ns), key)
                        p.execute()
                        return out
                    except self._watch_error:
                        continue
            raise RuntimeError("state update of several keys: too many concurrent writers")
        return self._call(go)

    def delete(self, ns: str, key: str | None = None) -> None:
        def go():
            if key is not None:
                p = self.r.pipeline(transaction=True)
                p.delete(self._k(ns, key))
                p.srem(self._idx(ns), key)
                p.execute()
                return
            keys = [self._k(ns, k.decode()) for k in cast(set[bytes], self.r.smembers(self._idx(ns)))]
            self.r.delete(self._idx(ns), *keys)
        self._call(go)

    def items(self, ns: str) -> list[tuple[str, Any]]:
        def go():
            keys = sorted(k.decode() for k in cast(set[bytes], self.r.smembers(self._idx(ns))))
            blobs = self.r.mget([self._k(ns, k) for k in keys]) if keys else []
            return [(k, self.decode(cast(bytes, b))) for k, b in zip(keys, blobs) if b is not None]
        return self._call(go)

    def close(self) -> None:
        with suppress(Exception):
            self.r.close()


def open_state(settings, home: Path, bus=None) -> Codec:
    """The backend ``state.url`` names (empty: SQLite under ``home``), sealed when a key is set.
    Raises :class:`SealError` when the stored data needs another key."""
    sealer = settings.state.sealer()
    url = (settings.state.url or "").strip()
    if url.startswith(("redis://", "rediss://", "unix://")):
        st: Codec = RedisStateStore(url, sealer, bus=bus, prefix=settings.state.prefix)
    elif not url or url.startswith("sqlite:///"):
        st = StateStore(url[len("sqlite:///"):] if url else Path(home) / "state.sqlite", sealer)
    else:
        raise SettingsError(f"state.url: unsupported backend {url!r} (sqlite:///PATH or redis://HOST:PORT/DB)")
    try:
        st.check_key()
    except StateUnavailable:
        pass  # a shared server down at start-up: checked on first use, traffic flows meanwhile
    except SealError:
        st.close()
        raise
    return st


__all__ = ["Codec", "StateStore", "RedisStateStore", "StateUnavailable", "SealError", "open_state"]
