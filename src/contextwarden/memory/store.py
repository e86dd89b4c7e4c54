"""The long-term memory store: Chroma, embedded under ``cw_home`` or a shared Chroma server.

By default the store is a ``chromadb.PersistentClient`` at ``cw_home/chroma``. Chroma is thread-safe but
not process-safe, so a local store has ONE writer process: the proxy holds ``cw_home/memory.lock`` while
it runs, and the CLI's write commands (``memory import|prune|delete``) refuse while another process holds
it. Several proxies that must share one memory point ``memory.chroma_url`` at a Chroma server
(``chromadb.HttpClient``) instead; then there is no local lock.

Each tenant's items live in a Chroma collection of their own (a shared workspace's items in the
workspace's collection): a query searches only the caller's collections, so tenant isolation is
structural, and fast. (Filtering one big collection by a ``where`` on the tenant costs Chroma a scan of
the metadata: ~700 ms a query at 100K items here, against ~5 ms for the unfiltered HNSW search.) The
results are checked against the tenant once more before they are returned.

We always pass our own vectors (:class:`~contextwarden.memory.embedder.Embedder`); Chroma's default
embedding function is never run. Without a model the store still keeps text and metadata, in one
text-only collection with a one-number placeholder vector, so lexical retrieval works; once a model is
available, :meth:`MemoryStore.backfill` embeds those items and moves them to their tenants' collections.

Every item is stored once per tenant (the id is ``tenant:content-hash``).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import orjson

from ..util.redact import redact_secrets
from ..util.sealing import Sealer, load_key
from .envelopes import searchable
from .items import MemoryItem

if TYPE_CHECKING:
    from ..settings.memory import MemorySection
    from .embedder import CachedEmbedder, Embedder

PARTITION_PREFIX = "cwm-"  # one collection of model vectors (cosine) per tenant or shared workspace
TEXT_COLLECTION = "cw_memory_text"  # items stored without a model: placeholder vectors, every tenant
PAGE = 5000  # rows per Chroma get: larger pages cost less per row (~0.4 ms a row either way)
_PLACEHOLDER = [1.0]


class StoreUnavailable(RuntimeError):
    """The store cannot be used (Chroma failed to open, or another process owns the local store)."""


# --- one writer process per local store ---------------------------------------------------------------
_locks: dict[str, list] = {}  # path -> [file object, refcount]; several stores in one process share it
_locks_guard = threading.Lock()


def _acquire_writer_lock(path: Path) -> str | None:
    """Take the store's writer lock for this process; returns None, or why it is held elsewhere."""
    key = str(path)
    with _locks_guard:
        if key in _locks:
            _locks[key][1] += 1
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            return holder
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        _locks[key] = [f, 1]
        return None


def _release_writer_lock(path: Path) -> None:
    key = str(path)
    with _locks_guard:
        entry = _locks.get(key)
        if not entry:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            f = entry[0]
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            finally:
                f.close()
            del _locks[key]


def writer_lock_holder(home: Path) -> str | None:
    """The pid of another process that holds ``home``'s store lock, or None (free, or held by us)."""
    path = Path(home) / "memory.lock"
    if str(path) in _locks or not path.exists():
        return None
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            return f.read().strip() or "?"
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return None


def _where_and(*clauses: dict | None) -> dict | None:
    cs = [c for c in clauses if c]
    if not cs:
        return None
    return cs[0] if len(cs) == 1 else {"$and": cs}


def partition_name(tenant: str, workspace: str | None = None) -> str:
    """The collection holding ``tenant``'s items, or the shared ``workspace``'s when one is given.
    Readable, within Chroma's name rules, and unique through a hash of the key."""
    key = f"w:{workspace}" if workspace else f"t:{tenant}"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", workspace or tenant)[:40].strip("-._") or "x"
    return f"{PARTITION_PREFIX}{key[0]}-{slug}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def _partition_of(it: MemoryItem) -> str:
    return partition_name(it.tenant, it.workspace)


def tenant_where(tenants: list[str], workspace: str | None = None) -> dict:
    """Chroma ``where`` that admits only ``tenants`` (and, if given, the shared ``workspace``)."""
    w: dict = {"tenant": tenants[0]} if len(tenants) == 1 else {"tenant": {"$in": list(tenants)}}
    if workspace:
        w = {"$or": [w, {"workspace": workspace}]}
    return w


class MemoryStore:
    """Chroma-backed memory. See the module docstring for the one-writer rule.

    ``available`` is False (and ``error`` says why) when Chroma could not be opened; then queries return
    nothing and :meth:`add` raises :class:`StoreUnavailable`. A Chroma error during a call is raised to
    the caller (the ingestor and the memory stage catch it and fail open).
    """

    def __init__(self, home: Path | str, settings: MemorySection, embedder: Embedder | CachedEmbedder | None,
                 *, read_only: bool = False, sealer: Sealer | None = None) -> None:
        self.home = Path(home)
        self.sealer = sealer if sealer is not None else Sealer(load_key())  # default: CONTEXTWARDEN_KEY only
        self.settings = settings
        self.embedder = embedder
        self.read_only = read_only
        self.url = settings.chroma_url
        self.path = self.home / "chroma"
        self.available = False
        self.error: str | None = None
        self._lock = threading.RLock()
        self._lock_path = self.home / "memory.lock"
        self._has_writer_lock = False
        self._client: Any = None
        self._parts: dict[str, Any] = {}  # partition name -> collection (opened or created)
        self._text_col: Any = None
        self._max_batch = 5000
        self._closed = False
        self._retry_at = 0.0
        self._open()

    # --- opening -------------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return f"chroma server {self.url}" if self.url else f"chroma at {self.path}"

    def _open(self) -> None:
        try:
            import chromadb
            from chromadb.config import Settings as ChromaSettings

            cs = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
            if self.url:
                u = urlparse(self.url if "://" in self.url else f"http://{self.url}")
                self._client = chromadb.HttpClient(host=u.hostname or "localhost",
                                                   port=u.port or (443 if u.scheme == "https" else 8000),
                                                   ssl=u.scheme == "https", settings=cs)
            else:
                if not self.read_only:
                    holder = _acquire_writer_lock(self._lock_path)
                    if holder is not None:
                        self.error = (f"memory store {self.path} is in use by process {holder}: Chroma allows one "
                                      "writer process per local store (stop it, or share a Chroma server through "
                                      "memory.chroma_url)")
                        return
                    self._has_writer_lock = True
                self.path.mkdir(parents=True, exist_ok=True)
                self._client = chromadb.PersistentClient(path=str(self.path), settings=cs)
            self._text_col = self._client.get_or_create_collection(TEXT_COLLECTION, embedding_function=None)
            with suppress(Exception):
                self._max_batch = max(1, int(self._client.get_max_batch_size()))
            self.available = True
        except Exception as e:  # Chroma missing, a server down, a corrupt directory: memory off, proxy on
            self.error = f"{self.backend} unavailable: {type(e).__name__}: {e}"
            self._release()

    def _release(self) -> None:
        if self._client is not None:
            with suppress(Exception):
                self._client.close()
        self._client = self._text_col = None
        self._parts = {}
        if self._has_writer_lock:
            _release_writer_lock(self._lock_path)
            self._has_writer_lock = False

    def reopen_if_down(self, every_s: float = 30.0) -> bool:
        """Try to open again a store that failed to open (a Chroma server that was down, a local store
        another process held), at most every ``every_s`` seconds. The ingestor calls this, so memory comes
        back without a restart; requests never wait for it. Returns ``available``."""
        if self.available or self._closed:
            return self.available
        with self._lock:
            now = time.monotonic()
            if self.available or now < self._retry_at:
                return self.available
            self._retry_at = now + every_s
            self.error = None
            self._open()
        return self.available

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout: float | None = None) -> None:
        """Release Chroma and the writer lock. The store is unusable afterwards. ``timeout``: how long to
        wait for a write in progress (an ingestion batch embedding holds the store); past it, the store
        is only marked closed and Chroma is left to the process's exit (the memory process, exiting)."""
        locked = self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout))
        self._closed = True
        self.available = False
        if not locked:
            return
        try:
            self._release()
        finally:
            self._lock.release()

    def _check(self, write: bool = False) -> None:
        if not self.available:
            raise StoreUnavailable(self.error or "memory store closed")
        if write and self.read_only:
            raise StoreUnavailable("memory store opened read-only")

    def _part(self, name: str, create: bool = False) -> Any:
        """A partition's collection; None if it does not exist and ``create`` is false."""
        col = self._parts.get(name)
        if col is not None:
            return col
        if create:
            col = self._client.get_or_create_collection(name, embedding_function=None,
                                                        configuration={"hnsw": {"space": "cosine"}})
        else:
            try:
                col = self._client.get_collection(name, embedding_function=None)
            except Exception:  # not created yet: this tenant has stored nothing
                return None
        self._parts[name] = col
        return col

    def _partitions(self) -> list[Any]:
        names = sorted(c.name if hasattr(c, "name") else str(c) for c in self._client.list_collections())
        return [c for c in (self._part(n) for n in names if n.startswith(PARTITION_PREFIX)) if c is not None]

    def _partitions_for(self, tenants: list[str], workspace: str | None) -> list[Any]:
        names = [partition_name(t) for t in dict.fromkeys(tenants)] + ([partition_name("", workspace)] if workspace else [])
        return [c for c in (self._part(n) for n in names) if c is not None]

    def _collections(self) -> list[Any]:
        return self._partitions() + [self._text_col]

    # --- writing -------------------------------------------------------------------------------------
    def _existing(self, items: list[MemoryItem], text_only: bool = True) -> set[str]:
        """Ids of ``items`` stored already (in their partition, or text-only)."""
        found: set[str] = set()
        by_part: dict[str, list[str]] = {}
        for it in items:
            by_part.setdefault(_partition_of(it), []).append(it.id)
        groups = [(self._part(n), ids) for n, ids in by_part.items()]
        if text_only:
            groups.append((self._text_col, [it.id for it in items]))
        for col, ids in groups:
            if col is None:
                continue
            for i in range(0, len(ids), self._max_batch):
                found.update(col.get(ids=ids[i:i + self._max_batch], include=[])["ids"])
        return found

    def add_items(self, items: Iterable[MemoryItem], embeddings=None, *, _moving: bool = False,
                  text_only: bool = False) -> list[MemoryItem]:
        """Store what is not stored yet; returns the items that were new. Embeds in batches, unless
        ``embeddings`` (one row per item, in order) are given; ``text_only``: not embedded now, stored
        as while no model is available (:meth:`backfill` embeds them later)."""
        if not self.available:
            self.reopen_if_down()
        self._check(write=True)
        items = list(items)
        if embeddings is not None and len(embeddings) != len(items):
            raise ValueError("one embedding per item")
        unique: dict[tuple[str, str], int] = {}
        for k, it in enumerate(items):
            key = (_partition_of(it), it.id)
            if it.text and it.text.strip() and key not in unique:
                unique[key] = k
        if not unique:
            return []
        with self._lock:
            have = self._existing([items[k] for k in unique.values()], text_only=not _moving)
            new = [k for (_, i), k in unique.items() if i not in have]
            groups: dict[str | None, list[int]] = {}
            for k in new:
                groups.setdefault(_partition_of(items[k]) if not text_only and (embeddings is not None or self.embedder)
                                  else None, []).append(k)
            step = max(1, min(self._max_batch, 256 if embeddings is None else 4096))
            for part, ks in groups.items():
                col = self._text_col if part is None else self._part(part, create=True)
                for i in range(0, len(ks), step):
                    idx = ks[i:i + step]
                    batch = [items[k] for k in idx]
                    # stored verbatim (sealed when a key is set), embedded without the agents' envelopes
                    kw = {"ids": [it.id for it in batch], "documents": [self.sealer.seal_text(it.text) for it in batch],
                          "metadatas": [it.to_metadata() for it in batch]}
                    if part is None:
                        col.add(embeddings=[_PLACEHOLDER] * len(batch), **kw)
                    elif embeddings is not None:
                        col.add(embeddings=[embeddings[k] for k in idx], **kw)
                    elif self.embedder is not None:  # (a partition is only chosen with one)
                        col.add(embeddings=self.embedder([searchable(it.text) for it in batch]), **kw)
        return [items[k] for k in new]

    def add(self, items: list[MemoryItem], embeddings=None) -> int:
        """Store ``items`` (deduplicated by id, within the batch and against the store); returns how
        many were new. ``embeddings``: precomputed vectors, one per item (else the embedder runs)."""
        return len(self.add_items(items, embeddings))

    def backfill(self, limit: int | None = None) -> int:
        """Embed items stored while no model was available and move them to their partitions."""
        self._check(write=True)
        if self.embedder is None:
            return 0
        moved = 0
        with self._lock:
            while limit is None or moved < limit:
                n = PAGE if limit is None else min(PAGE, limit - moved)
                got = self._text_col.get(limit=n, include=["documents", "metadatas"])
                if not got["ids"]:
                    break
                items = [self._item(d, m) for d, m in zip(got["documents"], got["metadatas"])]
                self.add_items(items, _moving=True)  # deduplicated against what the partitions hold
                self._text_col.delete(ids=got["ids"])
                moved += len(got["ids"])
        return moved

    def warm(self, tenants: list[str] | None = None) -> int:
        """Load partitions' vector indexes now (Chroma loads one on its first query: ~1 s per 25K items
        here), so the first request of a tenant does not pay it. Returns how many were loaded."""
        if not self.available or self.embedder is None:
            return 0
        cols = self._partitions() if tenants is None else self._partitions_for(tenants, None)
        probe = [1.0] + [0.0] * (int(getattr(self.embedder, "dim", 384)) - 1)
        n = 0
        for col in cols:
            with suppress(Exception):
                col.query(query_embeddings=[probe], n_results=1, include=[])
                n += 1
        return n

    # --- reading -------------------------------------------------------------------------------------
    def vector_query(self, text: str, tenants: list[str], n: int, where: dict | None = None,
                     query_embedding=None, workspace: str | None = None) -> list[tuple[MemoryItem, float]]:
        """The ``n`` items nearest to ``text`` among ``tenants``' items (plus the shared ``workspace``'s),
        best first, with cosine similarity clipped to [0, 1]. Empty without a model or without tenants.

        Only the callers' partitions are searched. ``where`` adds Chroma conditions (e.g.
        ``{"session": {"$ne": s}}``), but Chroma evaluates it by scanning metadata (hundreds of ms at
        100K items): on the request path, fetch more and filter the result instead."""
        if not self.available or not tenants or n <= 0:
            return []
        if query_embedding is None:
            if self.embedder is None:
                return []
            query_embedding = self.embedder([text])[0]
        allowed = set(tenants)
        scored: list[tuple[float, MemoryItem]] = []
        for col in self._partitions_for(tenants, workspace):
            res = col.query(query_embeddings=[query_embedding], n_results=int(n), where=where,
                            include=["documents", "metadatas", "distances"])
            for doc, md, dist in zip(res["documents"][0], res["metadatas"][0], res["distances"][0]):
                # the partition already did this; a second check costs nothing and guards isolation
                if md.get("tenant") not in allowed and not (workspace and md.get("workspace") == workspace):
                    continue
                scored.append((float(dist), self._item(doc, md)))
        scored.sort(key=lambda x: x[0])
        return [(it, min(1.0, max(0.0, 1.0 - d))) for d, it in scored[:n]]

    def get_by_ids(self, memory_ids: list[str], tenants: list[str], workspace: str | None = None) -> list[MemoryItem]:
        """Items whose ``m-…`` id or ``source_id`` is in ``memory_ids`` (a clearing stub's id finds the
        original tool result or its chunks), within ``tenants``."""
        if not self.available or not memory_ids or not tenants:
            return []
        ids = list(memory_ids)
        cond = {"$or": [{"mid": {"$in": ids}}, {"source_id": {"$in": ids}}]}
        out = []
        for col in self._partitions_for(tenants, workspace):
            got = col.get(where=cond, include=["documents", "metadatas"])
            out += [self._item(d, m) for d, m in zip(got["documents"], got["metadatas"])]
        got = self._text_col.get(where=_where_and(tenant_where(tenants, workspace), cond), include=["documents", "metadatas"])
        out += [self._item(d, m) for d, m in zip(got["documents"], got["metadatas"])]
        allowed = set(tenants)
        return sorted((it for it in out if it.tenant in allowed or (workspace and it.workspace == workspace)),
                      key=lambda it: (it.turn, it.ts))

    def _item(self, doc: str, md: dict) -> MemoryItem:
        """A Chroma document (sealed when a key is set; a wrong key raises SealError) + its metadata."""
        return MemoryItem.from_record(self.sealer.open_text(str(doc)), md)

    def _pages(self, col: Any, where: dict | None, include: list[str]) -> Iterator[dict]:
        offset = 0
        while True:
            got = col.get(where=where, limit=PAGE, offset=offset, include=include)
            if not got["ids"]:
                return
            yield got
            if len(got["ids"]) < PAGE:
                return
            offset += PAGE

    def iter_items(self, tenants: list[str] | None = None, workspace: str | None = None,
                   where: dict | None = None) -> Iterator[MemoryItem]:
        """Every stored item (of ``tenants``, plus the shared ``workspace``'s, when given), for building
        the lexical index and for export. Unordered."""
        if not self.available or (tenants is not None and not tenants):
            return
        if tenants is None:
            groups = [(c, where) for c in self._collections()]
        else:
            groups = [(c, where) for c in self._partitions_for(tenants, workspace)]
            groups.append((self._text_col, _where_and(tenant_where(tenants, workspace), where)))
        for col, w in groups:
            for got in self._pages(col, w, ["documents", "metadatas"]):
                for d, m in zip(got["documents"], got["metadatas"]):
                    yield self._item(d, m)

    def _metadatas(self) -> Iterator[dict]:
        for col in self._collections():
            for got in self._pages(col, None, ["metadatas"]):
                yield from got["metadatas"]

    def fingerprint(self) -> dict:
        """What the store holds, cheaply: items per collection (keys a snapshot of the lexical index)."""
        if not self.available:
            return {}
        return {"backend": self.backend, "counts": {c.name: c.count() for c in self._collections()}}

    def count(self) -> int:
        """Items stored (both collections)."""
        if not self.available:
            return 0
        return sum(col.count() for col in self._collections())

    def sessions(self) -> list[dict]:
        """One row per (tenant, session): items, turns, kinds, tools, first and last time; newest first."""
        if not self.available:
            return []
        rows: dict[tuple[str, str], dict] = {}
        for md in self._metadatas():
            key = (md.get("tenant", ""), md.get("session", ""))
            r = rows.get(key)
            if r is None:
                r = rows[key] = {"session": key[1], "tenant": key[0], "items": 0, "turns": set(), "kinds": Counter(),
                                 "tools": set(), "first": md.get("ts", 0.0), "last": md.get("ts", 0.0)}
            r["items"] += 1
            r["turns"].add(md.get("turn", 0))
            r["kinds"][md.get("kind", "?")] += 1
            if md.get("tool"):
                r["tools"].add(md["tool"])
            ts = md.get("ts", 0.0)
            r["first"], r["last"] = min(r["first"], ts), max(r["last"], ts)
        out = []
        for r in rows.values():
            r["turns"] = len(r["turns"])
            r["tools"] = sorted(r["tools"])
            r["kinds"] = dict(r["kinds"])
            out.append(r)
        return sorted(out, key=lambda r: r["last"], reverse=True)

    def stats(self) -> dict:
        """Totals for ``contextwarden stats``: items, vectors, text-only items, tenants, sessions, kinds,
        oldest/newest, text size and disk size."""
        s: dict[str, Any] = {"backend": self.backend, "available": self.available, "error": self.error,
                             "embedder": self.embedder.source if self.embedder else None}
        if not self.available:
            return s
        mds = list(self._metadatas())
        tenants = Counter(md.get("tenant", "") for md in mds)
        times = [md["ts"] for md in mds if md.get("ts") is not None]
        parts = self._partitions()
        s.update(items=len(mds), vectors=sum(c.count() for c in parts), text_only=self._text_col.count(),
                 partitions=len(parts), tenants=dict(tenants), kinds=dict(Counter(md.get("kind", "?") for md in mds)),
                 sessions=len({(md.get("tenant", ""), md.get("session", "")) for md in mds}),
                 oldest=min(times, default=None), newest=max(times, default=None))
        if not self.url and self.path.is_dir():
            s["disk_bytes"] = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return s

    # --- deleting ------------------------------------------------------------------------------------
    def _delete_where(self, where: dict | None) -> int:
        self._check(write=True)
        n = 0
        with self._lock:
            for col in self._collections():
                while True:
                    ids = col.get(where=where, limit=self._max_batch, include=[])["ids"]
                    if not ids:
                        break
                    col.delete(ids=ids)
                    n += len(ids)
        return n

    def delete_session(self, session: str, tenant: str | None = None) -> int:
        """Forget a session (of one tenant, or of every tenant); returns items deleted."""
        return self._delete_where(_where_and({"session": session}, {"tenant": tenant} if tenant else None))

    def prune(self, older_than_days: float) -> int:
        """TTL expiry: delete items stored more than ``older_than_days`` ago; returns items deleted."""
        return self._delete_where({"ts": {"$lt": time.time() - float(older_than_days) * 86400.0}})

    # --- export / import -----------------------------------------------------------------------------
    def export_jsonl(self, path: str | os.PathLike) -> int:
        """Write every item as one JSON object a line (``id``, ``text`` and metadata; no vectors)."""
        n = 0
        with open(path, "wb") as f:
            for it in self.iter_items():
                f.write(orjson.dumps(it.to_record()) + b"\n")
                n += 1
        return n

    def import_jsonl(self, path: str | os.PathLike) -> int:
        """Add the items of an export (re-embedded, redacted again, deduplicated); returns how many were
        new. Lines that are not records are skipped."""
        self._check(write=True)
        new = 0
        batch: list[MemoryItem] = []
        with open(path, "rb") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    item = MemoryItem.from_record(orjson.loads(line))
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue
                # an export may come from elsewhere: it gets the same redaction as live traffic
                item.text, _ = redact_secrets(item.text)
                batch.append(item)
                if len(batch) >= 512:
                    new += self.add(batch)
                    batch = []
        if batch:
            new += self.add(batch)
        return new
