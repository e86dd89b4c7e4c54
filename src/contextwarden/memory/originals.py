"""The whole originals of what memory stores, by the id a stub or a summary names: ``recall(id)``.

Chroma holds what is searched: redacted texts cut into chunks of at most ~240 word pieces, embedded.
A chunk is not what the model lost, and the chunks of a text do not join back into it byte for byte (a
fence cut in two is re-opened). So every text the ingestor stores, every tool result clearing or
compaction takes out, every span of turns a compaction folds and every note an agent remembers is also
kept here WHOLE (secrets redacted, as everything memory keeps), keyed by its memory id (``m-`` + 16 hex
of the SHA-256 of the original text: the id the stub names) and its partition (tenant, or shared
workspace).

SQLite in WAL mode, ``cw_home/memory-originals.sqlite``: a primary-key lookup is a few microseconds at
100K rows, and unlike Chroma's local store, several processes may open it (the proxy writes; the CLI
reads it directly when the proxy is not running, and could even while it runs).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from .items import MemoryItem

FILE = "memory-originals.sqlite"
_COLS = "mid, part, tenant, workspace, session, turn, role, kind, tool, ts, text"


class OriginalStore:
    """Whole originals by memory id, per tenant. Thread-safe (one connection under a lock)."""

    def __init__(self, home: Path | str, *, read_only: bool = False) -> None:
        self.path = Path(home) / FILE
        self.read_only = read_only
        self._lock = threading.Lock()
        if read_only:
            if not self.path.exists():
                self._db = None
                return
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS originals (mid TEXT NOT NULL, part TEXT NOT NULL, tenant TEXT NOT NULL, "
                "workspace TEXT, session TEXT, turn INTEGER, role TEXT, kind TEXT, tool TEXT, ts REAL, text TEXT NOT NULL, "
                "PRIMARY KEY (part, mid)) WITHOUT ROWID")
            self._db.execute("CREATE INDEX IF NOT EXISTS originals_mid ON originals (mid)")
            self._db.execute("CREATE INDEX IF NOT EXISTS originals_session ON originals (session)")
        self._db.execute("PRAGMA busy_timeout=2000")

    @property
    def available(self) -> bool:
        return self._db is not None

    def put(self, items: Iterable[MemoryItem]) -> int:
        """Keep each item under ``item.source_id`` (else its own memory id); the first copy of an id in a
        partition stays (same id, same text). Returns how many were new."""
        rows = []
        for it in items:
            if not it.text or not it.text.strip():
                continue
            rows.append((it.source_id or it.memory_id, it.workspace or it.tenant, it.tenant, it.workspace,
                         it.session, int(it.turn), it.role, it.kind, it.tool, float(it.ts), it.text))
        if not rows or self._db is None or self.read_only:
            return 0
        with self._lock:
            before = self._db.total_changes
            self._db.executemany(f"INSERT OR IGNORE INTO originals ({_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
            return self._db.total_changes - before

    def get(self, memory_ids: list[str], tenants: list[str], workspace: str | None = None) -> list[MemoryItem]:
        """The originals of ``memory_ids`` that belong to ``tenants`` (or the shared ``workspace``),
        in the order asked. Another tenant's id finds nothing."""
        if self._db is None or not memory_ids or not tenants:
            return []
        parts = list(dict.fromkeys(list(tenants) + ([workspace] if workspace else [])))
        ids = list(dict.fromkeys(memory_ids))[:500]
        q = (f"SELECT {_COLS} FROM originals WHERE mid IN ({','.join('?' * len(ids))}) "
             f"AND part IN ({','.join('?' * len(parts))})")
        with self._lock:
            rows = self._db.execute(q, ids + parts).fetchall()
        found: dict[str, MemoryItem] = {}
        for mid, _part, tenant, ws, session, turn, role, kind, tool, ts, text in rows:
            if tenant not in tenants and not (workspace and ws == workspace):
                continue  # the partition said so already; a second check guards isolation
            found.setdefault(mid, MemoryItem(text=text, session=session or "", tenant=tenant, turn=int(turn or 0),
                                             role=role or "tool", kind=kind or "tool_result", tool=tool or None,
                                             ts=float(ts or time.time()), workspace=ws or None, source_id=mid))
        return [found[i] for i in ids if i in found]

    def tenants(self) -> list[str]:
        """Every tenant that has originals here (the local single-user scope of the recall API)."""
        if self._db is None:
            return []
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT tenant FROM originals").fetchall()]

    def delete_session(self, session: str, tenant: str | None = None) -> int:
        if self._db is None or self.read_only:
            return 0
        with self._lock:
            if tenant:
                return self._db.execute("DELETE FROM originals WHERE session = ? AND tenant = ?",
                                        (session, tenant)).rowcount
            return self._db.execute("DELETE FROM originals WHERE session = ?", (session,)).rowcount

    def prune(self, older_than_days: float) -> int:
        if self._db is None or self.read_only:
            return 0
        with self._lock:
            return self._db.execute("DELETE FROM originals WHERE ts < ?",
                                    (time.time() - float(older_than_days) * 86400.0,)).rowcount

    def count(self) -> int:
        if self._db is None:
            return 0
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM originals").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
