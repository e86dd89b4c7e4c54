"""Small persistent state (per-session decisions, budgets, calibration) in SQLite under cw_home.

Decisions such as "this session was compacted up to message 40, with this summary" must survive a
restart, or the next request would compact differently and re-write the provider's cache.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson


class StateStore:
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (ns TEXT, key TEXT, value BLOB, updated REAL, PRIMARY KEY (ns, key))")

    def get(self, ns: str, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE ns=? AND key=?", (ns, key)).fetchone()
        return orjson.loads(row[0]) if row else default

    def put(self, ns: str, key: str, value: Any) -> None:
        blob = orjson.dumps(value, default=str)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO kv VALUES (?,?,?,?)", (ns, key, blob, time.time()))

    def delete(self, ns: str, key: str | None = None) -> None:
        with self._lock:
            if key is None:
                self._db.execute("DELETE FROM kv WHERE ns=?", (ns,))
            else:
                self._db.execute("DELETE FROM kv WHERE ns=? AND key=?", (ns, key))

    def items(self, ns: str) -> list[tuple[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM kv WHERE ns=? ORDER BY key", (ns,)).fetchall()
        return [(k, orjson.loads(v)) for k, v in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
