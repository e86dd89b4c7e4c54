"""Ingestion work stored before it is done: a table in SQLite that the ingestor drains.

A submission is written here at once (one insert, no embedding) and indexed by its words in the same
call (``ingest.py``); the ingestor's storer embeds and stores it and only then deletes the row
(:meth:`done`). In the memory process the table is a file under cw_home: a shutdown leaves what it did
not store there, and the next start finishes it (:meth:`recovered_rows`); elsewhere it is in memory.
The ingestor bounds it (``memory.pending_max`` items): past it, the oldest submissions' text is stored
without embedding them (embedded when the table is empty again).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import orjson

from .items import MemoryItem


class PendingTable:
    def __init__(self, path: str | Path | None = None, max_items: int = 200_000) -> None:
        """``path``: the table's file (None: in memory, gone with the process)."""
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.max_items = max(1, int(max_items))
        self._db = sqlite3.connect(":memory:" if path is None else str(path), check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER, "
                         "info BLOB, items BLOB)")
        self._lock = threading.Lock()
        self._closed = False
        row = self._db.execute("SELECT COALESCE(SUM(n), 0), COALESCE(MAX(id), 0) FROM pending").fetchone()
        self.items = self.recovered = int(row[0])  # (recovered: left by the previous run)
        self._last_recovered = int(row[1])  # rows up to this id were left by the previous run

    def add(self, items: list[MemoryItem], info: dict) -> int:
        """Store one submission; returns its row id (for :meth:`done`)."""
        blob = orjson.dumps([it.to_record() for it in items])
        with self._lock:
            cur = self._db.execute("INSERT INTO pending (n, info, items) VALUES (?, ?, ?)",
                                   (len(items), orjson.dumps(info), blob))
            self.items += len(items)
            return int(cur.lastrowid or 0)

    def recovered_rows(self) -> list[tuple[int, list[MemoryItem], dict]]:
        """The submissions the previous run left, oldest first: ``(row id, items, info)``. They stay in
        the table until :meth:`done`."""
        with self._lock:
            rows = self._db.execute("SELECT id, info, items FROM pending WHERE id <= ? ORDER BY id",
                                    (self._last_recovered,)).fetchall()
        return [(rid, [MemoryItem.from_record(r) for r in orjson.loads(blob)], orjson.loads(info))
                for rid, info, blob in rows]

    def done(self, ids: list[int]) -> None:
        """Submissions stored (or failed for good): removed. After close (a batch that outlived the
        shutdown's budget), nothing: its rows are stored again at the next start (deduplicated)."""
        with self._lock:
            if self._closed:
                return
            for rid in ids:
                row = self._db.execute("DELETE FROM pending WHERE id = ? RETURNING n", (rid,)).fetchone()
                if row is not None:
                    self.items -= row[0]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()
