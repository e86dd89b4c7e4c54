"""Small persistent state (per-session decisions, budgets, calibration, run-time overrides and bypass).

Decisions such as "this session was compacted up to message 40, with this summary" must survive a
restart, or the next request would compact differently and re-write the provider's cache.

Two backends behind one small interface (``get``/``put``/``delete``/``items``, plus ``update`` for
read-modify-write that must not lose a concurrent writer's change): SQLite under the data directory
(the default; one process, or several on one host) and Redis (``state.url = redis://...``, any
Redis-protocol server), which several proxies share (``state_redis.py``). Values are JSON, sealed with
AES-256-GCM when a key is set (``sealing.py``).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from .sealing import Sealer, SealError
from .statewrites import LastWritten

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
        raise NotImplementedError

    def update_many(self, updates: list[tuple[str, str, Callable[[Any], Any]]]) -> list[Any]:
        """:meth:`update` of each ``(ns, key, fn)`` in order, in one transaction where the backend has one
        (a decision's records, the session's control record and its versions: one commit, not three).
        A later ``fn`` sees what an earlier one of the same key stored. Here: one update after another."""
        return [self.update(ns, key, fn) for ns, key, fn in updates]

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
        self._updated = LastWritten()

    def load(self, ns: str, key: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE ns=? AND key=?", (ns, key)).fetchone()
        return bytes(row[0]) if row else None

    def store(self, ns: str, key: str, blob: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO kv VALUES (?,?,?,?)", (ns, key, blob, time.time()))

    def update(self, ns: str, key: str, fn: Callable[[Any], Any]) -> Any:
        return self.update_many([(ns, key, fn)])[0]

    def update_many(self, updates: list[tuple[str, str, Callable[[Any], Any]]]) -> list[Any]:
        # One transaction for all: each statement gives up the interpreter lock and takes it back, with
        # this store's lock held, so under load (sixteen stage threads) every commit saved is a wait saved
        # for every other request that writes state (issue 19).
        out: list[Any] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # also excludes other processes on this file
            try:
                now = time.time()
                for ns, key, fn in updates:
                    row = self._db.execute("SELECT value FROM kv WHERE ns=? AND key=?", (ns, key)).fetchone()
                    cur = self._updated.current(ns, key, row[0] if row else None, self.decode)
                    new = fn(cur)
                    if new is not cur:
                        blob = self.encode(new)
                        self._db.execute("INSERT OR REPLACE INTO kv VALUES (?,?,?,?)", (ns, key, blob, now))
                        self._updated.wrote(ns, key, blob, new)
                    out.append(new)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")  # (what it remembered writing is not what is stored: decoded next time)
                raise
        return out

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


def open_state(settings, home: Path, bus=None) -> Codec:
    """The backend ``state.url`` names (empty: SQLite under ``home``), sealed when a key is set.
    Raises :class:`SealError` when the stored data needs another key."""
    from . import sealing

    sealer = sealing.configure(settings.state.key_file or None)
    url = (settings.state.url or "").strip()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .state_redis import RedisStateStore

        st: Codec = RedisStateStore(url, sealer, bus=bus, prefix=settings.state.prefix)
    elif not url or url.startswith("sqlite:///"):
        st = StateStore(url[len("sqlite:///"):] if url else Path(home) / "state.sqlite", sealer)
    else:
        from .settings import SettingsError

        raise SettingsError(f"state.url: unsupported backend {url!r} (sqlite:///PATH or redis://HOST:PORT/DB)")
    try:
        st.check_key()
    except StateUnavailable:
        pass  # a shared server down at start-up: checked on first use, traffic flows meanwhile
    except SealError:
        st.close()
        raise
    return st


__all__ = ["Codec", "StateStore", "StateUnavailable", "SealError", "open_state"]
