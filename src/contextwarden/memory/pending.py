"""Ingestion work stored before it is done: a table in SQLite under cw_home that the ingestor drains.

A submission is written here at once (one insert, no embedding). The ingestor's indexer takes it
(:meth:`take`; with ``memory.index_first`` it is then searchable by its words), its storer embeds and stores it and only then deletes
the row (:meth:`done`). So a burst larger than the embedder can follow waits on disk instead of being
dropped, a shutdown leaves what it did not store here, and the next start finishes it. The table is
bounded too (``memory.pending_max`` items): past it, the ingestor stores the oldest submissions' text
without embedding them (embedded when the table is empty again). Only past ``HARD_FACTOR`` times the
bound (the worker cannot even store text: Chroma down) are the oldest not yet taken dropped, and
counted (never the traffic's problem).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import orjson

from .items import MemoryItem

HARD_FACTOR = 2  # past this many times ``max_items`` the oldest submissions are dropped


class PendingTable:
    def __init__(self, path: str | Path, max_items: int = 200_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_items = max(1, int(max_items))
        self.hard_max = HARD_FACTOR * self.max_items
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER, "
                         "info BLOB, items BLOB)")
        self._lock = threading.Lock()
        self._closed = False
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(n), 0) FROM pending").fetchone()
        self.rows, self.items = int(row[0]), int(row[1])
        self.recovered = self.items  # left by the previous run
        self._taken: set[int] = set()  # rows taken and not done yet (never dropped as oldest)
        # rows are taken in id order and new rows get larger ids: everything up to here has been taken
        # (so a take reads only what is new, however many taken rows wait to be stored)
        self._mark = 0
        self.dropped = 0

    def add(self, items: list[MemoryItem], info: dict) -> int:
        """Store one submission; returns how many items were dropped (oldest first) to stay under the
        hard bound (the ingestor keeps the table under ``max_items`` by storing text)."""
        blob = orjson.dumps([it.to_record() for it in items])
        with self._lock:
            self._db.execute("INSERT INTO pending (n, info, items) VALUES (?, ?, ?)",
                             (len(items), orjson.dumps(info), blob))
            self.rows += 1
            self.items += len(items)
            dropped = 0
            while self.items > self.hard_max and self.rows > 1:
                row = self._db.execute("SELECT id, n FROM pending WHERE id > ? ORDER BY id LIMIT 1",
                                       (self._mark,)).fetchone()
                if row is None:
                    break
                self._db.execute("DELETE FROM pending WHERE id = ?", (row[0],))
                self.rows -= 1
                self.items -= row[1]
                dropped += row[1]
            self.dropped += dropped
        return dropped

    def take(self, max_items: int, max_chars: int | None = None) -> list[tuple[int, list[MemoryItem], dict]]:
        """The oldest submissions not taken yet, up to ``max_items`` items and ``max_chars`` characters
        of text (at least one submission), oldest first. They stay in the table until :meth:`done`."""
        out = []
        n = chars = 0
        with self._lock:
            cur = self._db.execute("SELECT id, n, info, items FROM pending WHERE id > ? ORDER BY id", (self._mark,))
            for rid, k, info, blob in cur:
                if out and (n + k > max_items or (max_chars is not None and chars + len(blob) > max_chars)):
                    break
                out.append((rid, k, info, blob))
                self._taken.add(rid)
                self._mark = rid
                n += k
                chars += len(blob)
            cur.close()
        return [(rid, [MemoryItem.from_record(r) for r in orjson.loads(blob)], orjson.loads(info))
                for rid, k, info, blob in out]

    def done(self, ids: list[int]) -> None:
        """Submissions stored (or failed for good): removed. After close (a batch that outlived the
        shutdown's budget), nothing: its rows are stored again at the next start (deduplicated)."""
        with self._lock:
            if self._closed:
                return
            for rid in ids:
                self._taken.discard(rid)
                row = self._db.execute("DELETE FROM pending WHERE id = ? RETURNING n", (rid,)).fetchone()
                if row is not None:
                    self.rows -= 1
                    self.items -= row[0]

    @property
    def untaken(self) -> int:
        """Submissions no one has taken yet (what the indexer has still to read)."""
        with self._lock:
            return self.rows - len(self._taken)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()
