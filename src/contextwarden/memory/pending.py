"""Ingestion work stored before it is done: a table in SQLite under cw_home that the ingestor drains.

A submission is written here at once (one insert, no embedding) and taken by the ingestor's worker in
bounded batches, deleted only once stored. So a burst larger than the embedder can follow waits on disk
instead of being dropped, a shutdown leaves what it did not finish here, and the next start finishes it.
The table is bounded too (``memory.pending_max`` items): past it, the ingestor stores the oldest
submissions' text without embedding them (searchable by BM25 and by id at once, embedded when the
table is empty again: :meth:`take_over`). Only past ``HARD_FACTOR`` times the bound (the worker cannot
even store text: Chroma down) are the oldest dropped, and counted (never the traffic's problem).
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
        self._taken: set[int] = set()  # rows a batch is working on (not dropped as oldest under it)
        self.dropped = 0

    def add(self, items: list[MemoryItem], info: dict) -> int:
        """Store one submission; returns how many items were dropped (oldest first) to stay under the
        hard bound (the ingestor keeps the table under ``max_items`` by storing text: :meth:`take_over`)."""
        blob = orjson.dumps([it.to_record() for it in items])
        with self._lock:
            self._db.execute("INSERT INTO pending (n, info, items) VALUES (?, ?, ?)",
                             (len(items), orjson.dumps(info), blob))
            self.rows += 1
            self.items += len(items)
            dropped = 0
            while self.items > self.hard_max and self.rows > 1:
                row = self._db.execute("SELECT id, n FROM pending WHERE id NOT IN (%s) ORDER BY id LIMIT 1"
                                       % ",".join(str(i) for i in self._taken) if self._taken else
                                       "SELECT id, n FROM pending ORDER BY id LIMIT 1").fetchone()
                if row is None:
                    break
                self._db.execute("DELETE FROM pending WHERE id = ?", (row[0],))
                self.rows -= 1
                self.items -= row[1]
                dropped += row[1]
            self.dropped += dropped
        return dropped

    def take(self, max_items: int, max_chars: int | None = None) -> list[tuple[int, list[MemoryItem], dict]]:
        """The oldest submissions not being worked on, up to ``max_items`` items and ``max_chars``
        characters of text (at least one submission): what one batch embeds, so what a shutdown may
        wait for."""
        out = []
        n = chars = 0
        with self._lock:
            cur = self._db.execute("SELECT id, n, info, items FROM pending ORDER BY id")
            for rid, k, info, blob in cur:
                if rid in self._taken:
                    continue
                if out and (n + k > max_items or (max_chars is not None and chars + len(blob) > max_chars)):
                    break
                out.append((rid, k, info, blob))
                self._taken.add(rid)
                n += k
                chars += len(blob)
            cur.close()
        return [(rid, [MemoryItem.from_record(r) for r in orjson.loads(blob)], orjson.loads(info))
                for rid, k, info, blob in out]

    def take_over(self) -> list[tuple[int, list[MemoryItem], dict]]:
        """The oldest submissions not being worked on whose items take the table over ``max_items``
        (the ingestor stores their text now and embeds it later), or nothing when it is not over."""
        out = []
        with self._lock:
            excess = self.items - self.max_items
            if excess <= 0:
                return []
            cur = self._db.execute("SELECT id, n, info, items FROM pending ORDER BY id")
            for rid, k, info, blob in cur:
                if excess <= 0:
                    break
                if rid in self._taken:
                    continue
                out.append((rid, k, info, blob))
                self._taken.add(rid)
                excess -= k
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

    def release(self, ids: list[int]) -> None:
        """Taken but not stored (shutting down): left for the next run."""
        with self._lock:
            self._taken.difference_update(ids)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()
