"""The memory of one running proxy: store, embedder, ingestor, lexical index and tagger, together.

There is one :class:`MemoryService` per :class:`~contextwarden.core.runtime.Runtime`, created by the memory
stage's ``cw_configure`` and closed by its ``cw_shutdown``. Opening Chroma and loading the model take a
second or two, so they happen on a background thread: until the service is ready, requests go without
memory (the ``memory`` event says ``skipped: "starting"``) and nothing waits.

The lexical index lives in this process: each item is indexed by its words as the ingestor takes it,
before it is embedded (``on_indexed``: searchable while its vector lags; ``on_added`` finds it there). It is
saved next to the store when the service closes (``cw_home/memory-lexical.npz``, keyed by the item count
of every collection) and loaded from there at start-up (~1 s at 100K items); only when that snapshot is
missing or stale is it rebuilt from Chroma (~40-60 s at 100K), on the background thread: requests are
served meanwhile, their lexical ranking covering what is indexed so far (``lexical_ready`` says when it is
complete).
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..core.workerpool import process_mode
from ..util import redact as secrets
from ..util.lru import LRU
from .asides import Asides, Pieces
from .client import RemoteMemoryService, store_key
from .embedder import CachedEmbedder, load_embedder
from .embedworker import BackgroundEmbedder
from .ingest import Ingestor, _replace
from .items import MemoryItem
from .lexical import LexicalIndex, load_snapshot, save_snapshot
from .lexical_refresh import LexicalRefresh
from .originals import OriginalStore
from .pending import PendingTable
from .related import RelatedWords
from .retrieve import HistoryIndex, Query, Retrieval, Retriever, Vectors, text_keys_cache
from .scope import SessionVectors
from .store import MemoryStore
from .tagger import Tagger

if TYPE_CHECKING:
    from ..core.events import EventBus

# MemoryService.redact remembers the redaction of texts of REDACT_MEMO_MIN characters or more (shorter
# ones cost less to redact again than to keep), REDACT_MEMO_CHARS characters of them in all
REDACT_MEMO_MIN = 512
REDACT_MEMO_CHARS = 4_000_000
RECENT_IDS = 50_000  # ids of items submitted and originals kept lately, not submitted again (MemoryService.submit)


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A search's vector half started ahead (:meth:`MemoryService.prepare`), and when."""

    vectors: Vectors
    at: float


class Host(Protocol):
    """What the service reads of its runtime (in the memory process, the server: server.py)."""

    bus: EventBus
    home: Any
    settings: Any


class MemoryService:
    """Store + embedder + ingestor + lexical index + tagger of one runtime. Thread-safe."""

    def __init__(self, runtime: Host, background: bool = True, separate: bool = False) -> None:
        # in the memory process (server.py): the pending table is a file, ingestion tags what comes
        # untagged, and a shutdown flushes only ``memory.shutdown_flush_s``
        self.separate = separate
        self.text_keys = text_keys_cache()  # (HistoryIndex)
        self.bus = runtime.bus
        self.home = Path(runtime.home)
        self.settings = runtime.settings
        self.lexical = LexicalIndex()
        self.tagger = Tagger(self.settings.tagging)
        self.embedder: CachedEmbedder | None = None
        self.embedder_message = ""
        self.store: MemoryStore | None = None
        self.ingestor: Ingestor | None = None
        self.error: str | None = None
        self.ready = threading.Event()
        self.closed = False
        self._lexical_ready = threading.Event()
        self.lexical_source = "none"  # "snapshot" | "rebuilt" | "building" | "failed"
        self.lexical_ms: float | None = None
        self._lexical_complete = False  # every stored item is indexed (a snapshot may be saved)
        self._lexical_saved_n = -1
        self._recent = LRU(RECENT_IDS)  # ids of items submitted, and (tenant, id) of originals kept unsearchable, lately -> True
        self.originals = _open_originals(self.home)
        self._forgotten: set[tuple[str, str]] = set()  # (tenant, session) deleted while running
        # a text's redaction, remembered a while (:meth:`redact`)
        self._redactions = LRU(REDACT_MEMO_CHARS, size=len, min_size=REDACT_MEMO_MIN)
        self._keeper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cw-memory-keep")  # keep()'s work, in order
        # Chroma queries run here so a slow or dead Chroma costs a request its memory, not its latency
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cw-memory-query")
        self._scope: SessionVectors | None = None  # made with the first retriever
        self._related: RelatedWords | None = None  # made with the embedder
        self._asides: Asides | None = None  # made with the embedder
        self._pieces: Pieces | None = None  # made with the embedder
        self._prepared = LRU(self.PREPARED_MAX)  # searches' vector halves started ahead: token -> _Prepared
        self._key = store_key(self.settings)
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._open, name="cw-memory-open", daemon=True)
            self._thread.start()
        else:
            self._open()

    # --- life cycle ---------------------------------------------------------------------------------
    def _open(self) -> None:
        t0 = time.perf_counter()
        m = self.settings.memory
        try:
            emb, self.embedder_message = load_embedder(m.model_dir)
            if emb is not None:
                emb.warm()
                self.embedder = CachedEmbedder(emb, disk=m.embed_cache)
                self._related = RelatedWords(self.embedder)  # the sessions' words by embedding (on_added)
                self._asides = Asides(self.embedder)  # the person's sentences by embedding (on_added)
                self._pieces = Pieces(self.embedder)  # the participants' word pieces in context (on_added)
                if self.separate and m.embed_idle:
                    self.embedder.background = BackgroundEmbedder(emb, str(emb.model_dir))
                    self.embedder.is_background = self._on_storer
                if self.settings.tagging.embedding_tagger:
                    self.tagger = Tagger(self.settings.tagging, self.embedder)
            if self.closed:
                return
            self.store = MemoryStore(self.home, m, self.embedder, sealer=self.settings.state.sealer())
            if not self.store.available:
                self.error = self.store.error
                self.bus.emit("error", {"where": "memory", "message": self.error,
                                        "action": "requests go without memory"})
            else:
                # the memory process keeps what waits on disk (stored at the next start) and tags off the proxy
                journal = PendingTable(self.home / "memory-pending.sqlite" if self.separate else None, m.pending_max)
                if journal.recovered:
                    self.bus.emit("memory", {"recovered": journal.recovered, "pending": journal.items})
                self.ingestor = Ingestor(self.store, self.bus, self._on_added, journal=journal,
                                         batch_max=m.ingest_batch if self.separate else 256,
                                         batch_chars=m.ingest_batch_chars if self.separate else None,
                                         tag=self._tag if self.separate else None,
                                         on_originals=self.originals.put if self.originals is not None else None,
                                         on_indexed=self.lexical.add, redact=self.redact,
                                         quiet_s=m.embed_quiet_ms / 1000 if self.separate else 0.0)
        except Exception as e:  # memory is an extra: the proxy runs without it
            self.error = f"{type(e).__name__}: {e}"
            self.bus.emit("error", {"where": "memory", "message": self.error, "action": "requests go without memory"})
        finally:
            self.ready.set()
        if self.store is not None and self.store.available:
            with suppress(Exception):  # Chroma loads a partition's index on its first query: not on a request's clock
                warm = getattr(self.store, "warm", None)
                if warm is not None and not self.closed:
                    warm()
            self._load_lexical(self.store)
            if m.chroma_url and not self.closed:  # other replicas write there too: index their items
                LexicalRefresh(self).start()
        self.bus.emit("memory_status", {"status": "ready" if self.error is None else "unavailable",
                                        "error": self.error, "embedder": self.embedder_message,
                                        "backend": getattr(self.store, "backend", None),
                                        "lexical_items": len(self.lexical), "lexical": self.lexical_source,
                                        "lexical_ms": self.lexical_ms,
                                        "ms": round((time.perf_counter() - t0) * 1000, 1)})

    @property
    def lexical_path(self) -> Path:
        return self.home / "memory-lexical.npz"

    @property
    def lexical_ready(self) -> bool:
        """True once the lexical index covers every stored item (until then BM25 sees part of them)."""
        return self._lexical_ready.is_set() and self._lexical_complete

    def _load_lexical(self, store: MemoryStore) -> None:
        """The lexical index from its snapshot when it matches the store, else rebuilt from Chroma."""
        t = time.perf_counter()
        try:
            snap = load_snapshot(self.lexical_path, store.fingerprint(), store.sealer)
        except Exception:
            snap = None
        if snap is not None:
            self.lexical.adopt(snap)
            self.lexical_source = "snapshot"
            self._lexical_complete = True
            self._lexical_saved_n = len(snap)
            self._lexical_ready.set()
        else:
            self.lexical_source = "building"
            self._rebuild_lexical(store)
            self.lexical_source = "rebuilt" if self._lexical_complete else "failed"
            if self._lexical_complete:
                self.save_lexical()
        self.lexical_ms = round((time.perf_counter() - t) * 1000, 1)

    def save_lexical(self, flush: bool = True) -> bool:
        """Save the lexical index next to the store (at close, after a rebuild); False if it is not
        complete or there is nothing new. ``flush``: wait for ingestion first (not at close: a pending
        table under load is never empty)."""
        if not self._lexical_complete or self.store is None or not self.store.available:
            return False
        try:
            if flush and self.ingestor is not None:
                self.ingestor.flush(30)
            n = len(self.lexical)
            if n == self._lexical_saved_n:
                return False
            save_snapshot(self.lexical, self.lexical_path, self.store.fingerprint(), self.store.sealer)
            self._lexical_saved_n = n
            return True
        except Exception as e:
            self.bus.emit("error", {"where": "memory.lexical", "message": f"{type(e).__name__}: {e}",
                                    "action": "lexical index rebuilt at next start"})
            return False

    def _save_lexical_within(self, budget: float | None) -> None:
        """The snapshot at close, given ``budget`` seconds (None: as long as it takes). Past it, the
        process exits without a new snapshot and the next start rebuilds the index from the store (the
        pending table's items are indexed again by the ingestor)."""
        if budget is None:
            self.save_lexical(False)
            return
        t = threading.Thread(target=self.save_lexical, args=(False,), name="cw-memory-snapshot", daemon=True)
        t.start()
        t.join(budget)
        if t.is_alive():
            self.bus.emit("memory", {"snapshot": "skipped", "reason": f"not written in {budget:.1f} s of shutdown",
                                     "lexical_items": len(self.lexical)})

    def _rebuild_lexical(self, store: MemoryStore) -> None:
        try:
            # in turn order, so that each message is indexed after the turn it answers (its reply words)
            items = sorted(store.iter_items(), key=lambda it: (str(it.session), it.turn))
            for start in range(0, len(items), 2000):
                if self.closed:
                    return
                self.lexical.add(items[start:start + 2000])
            self._lexical_complete = True
        except Exception as e:
            self.bus.emit("error", {"where": "memory.lexical", "message": f"{type(e).__name__}: {e}",
                                    "action": "lexical ranking covers new items only"})
        finally:
            self._lexical_ready.set()

    def _tag(self, text: str) -> list[str]:
        """The storer's tags of a text the pending table holds (redacted when it was submitted)."""
        return self.tagger.tag(text, redacted=True) if self.settings.tagging.enabled else []

    def _on_storer(self) -> bool:
        """The calling thread is the storer: its embeddings go to the background worker (embedworker.py)."""
        return self.ingestor is not None and self.ingestor.is_storer()

    def _on_added(self, items) -> None:
        if self._scope is not None:  # (the lexical index has them since they were submitted)
            self._scope.stored(items)
        if self._related is not None and self.settings.memory.related_weight > 0:
            self._related.learn(self.lexical, items)
        if self._asides is not None and self.settings.memory.speaker_weight > 0:
            self._asides.learn(self.lexical, items)
        if self._pieces is not None and (self.settings.memory.speaker_weight > 0 or self.settings.memory.date_weight > 0):
            self._pieces.learn(self.lexical, items)

    def state(self, wait_s: float = 0.0) -> dict:
        """Open yet (waiting up to ``wait_s`` for it), available, the error, the lexical index complete."""
        return {"ready": self.ready.wait(wait_s), "available": self.available, "error": self.error,
                "lexical_ready": self.lexical_ready}

    def wait_ready(self, timeout: float = 60) -> bool:
        """Block until the store is open and the lexical index rebuilt (tests, CLI, evaluation)."""
        ok = self.ready.wait(timeout)
        if ok and self.store is not None and self.store.available:
            ok = self._lexical_ready.wait(timeout)
        return ok

    @property
    def available(self) -> bool:
        return self.ready.is_set() and self.store is not None and self.store.available and not self.closed

    def update(self, settings) -> bool:
        """New settings from ``cw_configure``: applied in place, unless the store itself changes (then
        returns False and the caller replaces the service)."""
        if store_key(settings) != self._key:
            return False
        self.settings = settings
        if self.tagger.settings != settings.tagging:
            self.tagger = Tagger(settings.tagging, self.embedder if settings.tagging.embedding_tagger else None)
        return True

    def close(self) -> None:
        self.closed = True
        took: list[tuple[str, float]] = []  # where a shutdown's seconds went (the memory process logs it)

        def step(name: str, fn, *a) -> None:
            t = time.monotonic()
            try:
                fn(*a)
            finally:
                took.append((name, time.monotonic() - t))
                if self.separate:
                    print(f"contextwarden memory: close: {name} {took[-1][1]:.1f} s", file=sys.stderr, flush=True)

        # in the memory process, originals still being written and ingestion share one budget (what
        # ingestion leaves stays pending for the next start; the turn's items carry the same texts)
        flush_s = self.settings.memory.shutdown_flush_s if self.separate else None
        end = None if flush_s is None else time.monotonic() + flush_s

        def left(default: float) -> float:
            return default if end is None else max(0.5, end - time.monotonic())

        if self._thread is not None and self._thread is not threading.current_thread():
            step("start thread", self._thread.join, left(30))
        try:
            step("originals", self.flush_kept, left(30))
            if self.ingestor is not None:
                step("ingestion", self.ingestor.close, left(10))
            # (the index also holds what waits for its vectors: large under load)
            step("lexical", self._save_lexical_within, max(1.5, left(0.0)) if end is not None else None)
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._keeper.shutdown(wait=False)
            if self.ingestor is not None:
                self.ingestor.journal.close()
            if self.store is not None:
                step("store", self.store.close, None if end is None else left(1.0))
            if self.embedder is not None:
                self.embedder.close()
            if self.originals is not None:
                self.originals.close()

    # --- work ---------------------------------------------------------------------------------------
    def submit(self, items, **info) -> bool:
        """Queue items for storage (never blocks); False when dropped or memory is unavailable. Items
        submitted recently are left out (the assistant's reply comes back as a message of the next
        request; the store would deduplicate it, after a lookup), and so are originals kept lately for
        recall alone (``keep(searchable=False)``), handed in again under their id: the memory stage hands in
        every tool result a stub replaces, in case memory missed its turn, and a result compressed when
        first seen had its compressed text stored then. Under load those 12 KB originals, one to four a
        turn once clearing began, were most of what the submission thread chunked and indexed, and the
        turns' words waited behind them (docs/benchmarks.md, "Fresh under load")."""
        if self.ingestor is None:
            return False
        fresh = [it for it in items if self._recent.peek(it.id) is None
                 and (it.source_id is None or self._recent.peek((it.tenant, it.source_id)) is None)]
        if not fresh:
            return True
        ok = self.ingestor.submit(fresh, **info)
        if ok:
            for it in fresh:
                self._recent.put(it.id, True)
        return ok

    def flush(self, timeout: float = 120) -> bool:
        """Wait until everything submitted (and kept: the keeper submits what it wrote) is stored and indexed."""
        end = time.monotonic() + timeout
        kept = self.flush_kept(timeout)
        return kept and (self.ingestor.flush(max(0.0, end - time.monotonic())) if self.ingestor is not None else True)

    def retriever(self, settings=None) -> Retriever:
        store = self.store if self.store is not None and self.store.available else None
        if store is not None and self._scope is None:
            self._scope = SessionVectors(store)  # the current sessions' vectors, kept between searches
        return Retriever(store, self.lexical, self.embedder, self._pool, (settings or self.settings).memory,
                         scope=self._scope if store is not None else None, related=self._related,
                         asides=self._asides, pieces=self._pieces)

    def neighbours(self, item) -> list:
        """The stored items next to ``item`` in its session (:meth:`LexicalIndex.neighbours`)."""
        return self.lexical.neighbours(item)

    PREPARED_MAX = 64  # vector halves kept for their searches (a search comes within ms of its prepare)
    PREPARED_TTL_S = 30.0

    def prepare(self, token: str, query: Query, tenants: list[str], *, workspace: str | None = None,
                settings=None, n: int | None = None, session: str | None = None, project: str | None = None) -> None:
        """Start the vector half of the search that :meth:`search` with ``prepared=token`` and these same
        arguments will finish (:meth:`Retriever.start`), as the request is read, so the embedding runs
        while the other stages do (``memory.prefetch``). A search with other arguments, or none within
        ``PREPARED_TTL_S``, leaves it unused."""
        if not self.available:
            return
        if self.ingestor is not None:
            self.ingestor.touch()
        v = self.retriever(settings).start(query, tenants, workspace=workspace, n=n, session=session, project=project)
        self._prepared.put(token, _Prepared(v, time.monotonic()))

    def search(self, query: Query, tenants: list[str], *, workspace: str | None = None, exclude=None,
               timeout_s: float | None = None, settings=None, n: int | None = None,
               session: str | None = None, project: str | None = None, prepared: str | None = None) -> Retrieval:
        """Fused candidates for ``query`` (see :meth:`Retriever.search`). While the lexical index is
        still being rebuilt, ``mode`` says so: its BM25 ranking covers only part of the store.
        ``prepared``: the token of this search's :meth:`prepare`."""
        if self.ingestor is not None:
            self.ingestor.touch()
        if isinstance(exclude, HistoryIndex):  # its candidates' keys cached here, from search to search
            exclude = exclude.using(self.text_keys)
        got = self._prepared.pop(prepared) if prepared is not None else None
        vectors = got.vectors if got is not None and time.monotonic() - got.at <= self.PREPARED_TTL_S else None
        ret = self.retriever(settings).search(query, tenants, workspace=workspace, exclude=exclude, timeout_s=timeout_s,
                                              n=n, neighbours=self.lexical.neighbours, session=session, project=project,
                                              vectors=vectors)
        if not self.lexical_ready and ret.mode in ("hybrid", "lexical"):
            ret.mode += " (lexical index building)"
        return ret


    # --- recall: plain data in, plain data / MemoryItems out (callable across a process boundary) -------
    def keep(self, items: list, searchable: bool = True) -> list[str]:
        """Keep ``items`` whole (redacted), under ``source_id`` (the id a stub or summary names), and (with
        ``searchable``) queue them for the searchable store. Returns their ids at once: the work (redaction,
        SQLite, the submission) is done by a thread of its own, and :meth:`recall` waits for what is
        pending, so an id is found as soon as anyone can have read it, while the request that names it
        never waits."""
        todo = [it for it in items if it.text and it.text.strip()]
        ids = [it.source_id or it.memory_id for it in todo]
        if not searchable:  # (its searchable form is the stage's own, the compressed text: see submit)
            # kept lately already: a result compressed when first seen is kept again by the recall stage
            # when a stub replaces it (the same text under the same id: redacted and written once). Per
            # tenant: an id is the text's, the same for every tenant, and each tenant's original is its own
            keys = [(it.tenant, i) for it, i in zip(todo, ids)]
            todo = [it for it, k in zip(todo, keys) if self._recent.peek(k) is None]
            for k in keys:
                self._recent.put(k, True)
        try:
            if todo:
                self._keeper.submit(self._keep_now, todo, searchable)
        except RuntimeError:  # closed
            return []
        return ids

    def redact(self, text: str) -> tuple[str, int]:
        """``redact_secrets(text)``, remembered a while: a kept original comes again to be stored when
        its turn ends (redacting 12 KB of code costs ~1 ms)."""
        return self._redactions.get(text, lambda: secrets.redact_secrets(text))

    def _keep_now(self, items: list, searchable: bool) -> None:
        wholes = [_replace(it, text=self.redact(it.text)[0], source_id=it.source_id or it.memory_id) for it in items]
        try:
            if self.originals is not None:
                self.originals.put(wholes)
        except Exception as e:  # an unwritable file costs recall, never the proxy
            self.bus.emit("error", {"where": "memory.originals", "message": f"{type(e).__name__}: {e}",
                                    "action": f"{len(items)} originals not kept"})
        if searchable and self.ingestor is not None:
            self.submit(items)  # (off the connection's thread, which keep() does not hold for it)

    def flush_kept(self, timeout: float = 10) -> bool:
        """Wait until every item :meth:`keep` took is written."""
        try:
            self._keeper.submit(lambda: None).result(timeout)  # (one worker: after everything before it)
        except (TimeoutError, RuntimeError):  # (RuntimeError: closed)
            return False
        return True

    def recall(self, memory_ids: list[str], tenants: list[str], workspace: str | None = None,
               wait_s: float = 10.0, chunks: bool = True) -> list:
        """The stored originals of ``memory_ids`` verbatim (secrets redacted), within ``tenants`` and the
        shared ``workspace``; ids of other tenants find nothing. Waits up to ``wait_s`` for originals
        still being written. With ``chunks``, an id only the searchable store knows (stored before
        originals were kept) comes back as its chunks, joined (a Chroma scan: not on a request's clock)."""
        if wait_s > 0:
            self.flush_kept(wait_s)
        found = self.originals.get(memory_ids, tenants, workspace) if self.originals is not None else []
        have = {f.source_id for f in found}
        missing = [i for i in memory_ids if i not in have]
        if missing and chunks and self.store is not None and self.available:
            cut: dict[str, list] = {}
            for it in self.store.get_by_ids(missing, tenants, workspace):
                cut.setdefault(it.source_id or it.memory_id, []).append(it)
                if it.memory_id != (it.source_id or it.memory_id):
                    cut.setdefault(it.memory_id, []).append(it)
            for mid in missing:
                if parts := cut.get(mid):
                    found.append(_replace(parts[0], text="\n".join(p.text for p in parts), source_id=mid))
        order = {m: k for k, m in enumerate(memory_ids)}
        return [it for it in sorted(found, key=lambda it: order.get(it.source_id, len(order)))
                if (it.tenant, it.session) not in self._forgotten]

    def search_hits(self, query: str, tenants: list[str], k: int = 10, budget_tokens: int | None = None,
                    workspace: str | None = None) -> dict:
        """Hybrid search for the recall API and the MCP ``search`` tool: the ``k`` best hits (or, with
        ``budget_tokens``, the most relevant that fit in it), each with its id, the id of the whole
        original it was cut from, its scores and where it came from."""
        t0 = time.perf_counter()
        forgotten = self._forgotten
        ret = self.search(Query(query), tenants, workspace=workspace, n=max(k * 3, self.settings.memory.candidates),
                          exclude=(lambda it: (it.tenant, it.session) in forgotten) if forgotten else None)
        hits, used = [], 0
        for h in exact_first(query, ret.hits):
            it = h.item
            toks = max(1, len(it.text) // 4)
            if budget_tokens is not None and used + toks > budget_tokens:
                continue
            used += toks
            hits.append({"id": it.memory_id, "source_id": it.source_id or it.memory_id, **h.scores(),
                         "exact": holds_exactly(query, it.text),
                         "session": it.session, "turn": it.turn, "role": it.role, "kind": it.kind, "tool": it.tool,
                         "ts": it.ts, "tenant": it.tenant, "workspace": it.workspace, "tokens": toks, "text": it.text})
            if budget_tokens is None and len(hits) >= k:
                break
        return {"hits": hits, "candidates": ret.candidates, "mode": ret.mode, "tokens": used,
                "ms": round((time.perf_counter() - t0) * 1000, 2), "skipped": ret.skipped}

    def remember(self, text: str, tenant: str, session: str = "notes", workspace: str | None = None,
                 agent: str | None = None, tags: list[str] | None = None) -> str:
        """An agent's note, kept for later turns and for the other agents of ``tenant`` (or of the shared
        ``workspace``): whole at once, and searchable once ingested. Returns its id."""
        item = MemoryItem(text=text, session=session, tenant=tenant, turn=0, role=agent or "agent", kind="note",
                          tags=list(tags or []), workspace=workspace)
        return self.keep([item])[0]

    def tenants(self) -> list[str]:
        """Every tenant this memory holds (the scope of a caller on this machine that shows only the token)."""
        out = set(self.originals.tenants()) if self.originals is not None else set()
        return sorted(out | {p for p in list(self.lexical._parts) if p.startswith("t-") or p == "anonymous"})

    def delete_session(self, session: str, tenant: str | None = None) -> int:
        """Forget a session (``memory delete`` while the proxy runs); its items leave search at once."""
        store = self.store
        n = store.delete_session(session, tenant) if store is not None and self.available else 0
        if self.originals is not None:
            n = max(n, self.originals.delete_session(session, tenant))
        for t in ([tenant] if tenant else self.tenants()):
            self._forgotten.add((t, session))
        return n

    def import_records(self, records: list[dict]) -> int:
        """Items of a JSONL export (``memory import`` while the proxy runs), through the ingestor: redacted
        again, chunked, embedded, indexed and kept whole. Returns how many were queued."""
        items = []
        for rec in records:
            try:
                items.append(MemoryItem.from_record(rec))
            except (KeyError, TypeError, ValueError):
                continue
        if not items or self.ingestor is None:
            return 0
        self.submit(items)
        self.flush(120)
        return len(items)


def _open_originals(home: Path):
    try:
        return OriginalStore(home)
    except Exception:  # an unreadable file costs recall, never the proxy
        return None


# --- one service per runtime ---------------------------------------------------------------------------
SLOT = "memory.service"  # the runtime's memo holding its service


@dataclass
class _Slot:
    """Where a runtime keeps its memory service (``runtime.memo(SLOT, _Slot)``), replaced under ``lock``."""

    svc: MemoryService | RemoteMemoryService | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def holds_exactly(query: str, text: str) -> bool:
    """``text`` holds ``query`` as written (of a multi-line quote, an Edit's old_string, its first line
    of 12 characters or more is enough)."""
    q = query.strip()
    if not q or len(q) > 2000:
        return False
    first = q.split("\n", 1)[0].strip()
    return q in text or (first != q and len(first) >= 12 and first in text)


def exact_first(query: str, hits: list) -> list:
    """Hits whose text holds the query as written (a path, an identifier, an error string, a quoted line
    the model used) before the others, each group in its fused order: a search for an exact string is
    answered by the texts that hold it, however the ranking weighed its words."""
    exact = [h for h in hits if holds_exactly(query, h.item.text)]
    if not exact:
        return hits
    taken = {id(h) for h in exact}
    return exact + [h for h in hits if id(h) not in taken]


def get_service(runtime) -> MemoryService | RemoteMemoryService | None:
    """The runtime's memory service, if memory is configured."""
    return runtime.memo(SLOT, _Slot).svc


def configure(runtime, background: bool = True) -> MemoryService | RemoteMemoryService | None:
    """Create (or update) the runtime's service from its settings; closes it when memory is disabled."""
    settings = runtime.settings
    slot = runtime.memo(SLOT, _Slot)
    separate = process_mode(settings.memory.process, settings) == "separate"
    with slot.lock:
        old = svc = slot.svc
        if settings.memory.enabled and svc is not None and separate == svc.separate and svc.update(settings):
            return svc  # applied in place
        slot.svc = None
    if old is not None:
        old.close()
    if not settings.memory.enabled:
        return None
    svc = RemoteMemoryService(runtime, MemoryService) if separate else MemoryService(runtime, background)
    with slot.lock:
        slot.svc = svc
    return svc


def shutdown(runtime) -> None:
    """Flush and close the runtime's service."""
    slot = runtime.memo(SLOT, _Slot)
    with slot.lock:
        svc, slot.svc = slot.svc, None
    if svc is not None:
        svc.close()
