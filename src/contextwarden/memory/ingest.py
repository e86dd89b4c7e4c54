"""Getting completed turns into the store, off the request path.

The memory stage's ``cw_turn_complete`` hook turns the conversation into items
(:func:`items_from_messages`) and hands them to :meth:`Ingestor.submit`, which only appends to a
bounded queue and returns. One worker thread then redacts secrets, cuts long texts into chunks, embeds
and stores. When the queue is full the work is dropped with a ``memory`` event ``{"dropped": n}``:
traffic never waits for memory. Chroma failures become ``error`` events, never exceptions in callers.
Each stored batch is a ``memory`` event (``ingested``, ``new``, ``deduplicated``, ``chunks``, ``ms``,
``queued``); history the proxy had not seen live is also an ``ingest`` event (``history: true``).

With a pending table (the memory process) a submission is written to the table, chunked, kept whole
for recall by id (``on_originals``) and indexed by its words (``on_indexed``) in the submitting call
itself: searchable by words and recallable at once. One worker thread, the *storer*, then tags, embeds
and stores what waits, as fast as the embedder goes: on a busy machine vectors lag (reported as
``lag_s`` and ``indexed``), words do not.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..models.base import ApiKind
from ..util.redact import redact_secrets
from ..wire.dialects import dialect
from .chunking import chunk_text, proxy_tokens
from .envelopes import strip_envelopes
from .ids import memory_id
from .items import MemoryItem
from .turns import units

if TYPE_CHECKING:
    from ..core.events import EventBus
    from .pending import PendingTable
    from .priority import SearchFirst
    from .store import MemoryStore

_ERROR_EVERY = 60.0  # seconds between repeated identical error events


REDACTED_NOTE = "redacted"  # a journal submission's info: secrets removed when it was stored (redacted once)


class Ingestor:
    """Bounded queue + one worker thread that redacts, chunks, embeds and stores items.

    ``queue_size`` bounds the items waiting (a single submit larger than the whole queue is still taken
    when the queue is empty, so one big turn is not lost). ``on_added`` receives the items that were new
    to the store, from the worker thread (the retrieval side updates its lexical index with it).

    The worker takes everything queued at once and works on it as one batch: texts it stored before
    (the hash of the original text, kept for the last ``SEEN`` texts) are skipped before any redaction;
    the rest is redacted and chunked (sizes in the model's word pieces, each line measured once), looked up
    in Chroma in one call per partition, and only what is new is embedded (runs sorted by length) and
    added (one call per partition and batch).
    """

    SEEN = 100_000  # original texts remembered as stored: a re-sent history costs a set lookup

    def __init__(self, store: MemoryStore, bus: EventBus, queue_size: int,
                 on_added: Callable[[list[MemoryItem]], object] | None = None, *,
                 chunk_tokens: int | None = None, count: Callable[[str], int] | None = None,
                 backfill: bool = True, journal: PendingTable | None = None, batch_max: int = 256,
                 batch_chars: int | None = None, priority: SearchFirst | None = None,
                 tag: Callable[[str], list[str]] | None = None,
                 on_originals: Callable[[list[MemoryItem]], None] | None = None,
                 on_indexed: Callable[[list[MemoryItem]], object] | None = None,
                 redact: Callable[[str], tuple[str, int]] | None = None) -> None:
        self.store = store
        # redact_secrets, or the memory service's remembered one (a kept text comes again with its turn)
        self._redact = redact
        # receives each batch's chunks before they are embedded (the lexical index: searchable by words)
        self.on_indexed = on_indexed
        # receives each text whole (redacted, not chunked) under the id its stub names: recall(id)
        self.on_originals = on_originals
        self.bus = bus
        self.queue_size = max(1, int(queue_size))
        self.on_added = on_added
        self.chunk_tokens = int(chunk_tokens or getattr(store.settings, "chunk_tokens", 240) or 240)
        if count is None:  # the model's own word pieces when it is there, a safe over-estimate otherwise
            tc = getattr(store.embedder, "token_counter", None)
            count = tc() if tc is not None else proxy_tokens
        self.count = count
        self.stats = {"submitted": 0, "dropped": 0, "stored": 0, "new": 0, "redacted": 0, "errors": 0,
                      "skipped_seen": 0, "embedded_tokens": 0, "stored_text_only": 0, "embedded_later": 0,
                      "indexed": 0}
        self.deferred = 0  # items stored as text under load, not embedded yet (journal mode)
        self._q: deque[tuple[list[MemoryItem], dict]] = deque()
        self._pending = 0  # items in the queue
        self._busy = False
        self._closing = False
        self._cv = threading.Condition()
        self._last_error: tuple[str, float] = ("", 0.0)
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()  # (partition, source hash) stored
        self._seen_lock = threading.Lock()
        self._backfill = backfill
        # journal: submissions are stored there at once and drained in batches (see pending.py); without
        # it they wait in memory and are dropped when the queue is full
        self.journal = journal
        self.batch_max = max(1, int(batch_max))  # items one batch takes: what a shutdown may wait for
        self.batch_chars = batch_chars  # and characters (journal mode): a tool output is ~13 chunks
        self.tag = tag  # tags items that come untagged (the memory process tags off the proxy)
        self.priority = priority  # searches first: this worker waits between its steps while one runs
        # journal mode: submissions indexed as they came (searchable with ``on_indexed``), oldest first,
        # that the storer has not stored yet (one per journal row; their rows stay in the journal until stored)
        self._indexed: deque[_Indexed] = deque()
        self._indexed_items = 0
        self._thread = threading.Thread(target=self._run, name="cw-memory-ingest", daemon=True)
        self._thread.start()

    def _redacted(self, text: str) -> tuple[str, int]:
        return self._redact(text) if self._redact is not None else redact_secrets(text)

    # --- producer side (any thread; never blocks) ----------------------------------------------------
    def submit(self, items: list[MemoryItem], *, flow_id: str | None = None, history: bool = False,
               messages: int | None = None) -> bool:
        """Queue ``items`` for storage; False (and a ``memory`` event ``dropped``) if they were dropped.

        ``history``: the items come from a conversation's history the proxy had not seen live (the first
        request of a resumed session); once stored, an ``ingest`` event says so (``messages`` of them).
        """
        items = [it for it in items if it.text and it.text.strip()]
        if not items:
            return True
        n = len(items)
        session = _session_of(items)
        info = {"flow_id": flow_id, "history": bool(history), "messages": messages, "n": n, "session": session}
        if self.journal is not None:
            return self._submit_journal(items, info)
        with self._cv:
            full = self._closing or (self._pending > 0 and self._pending + n > self.queue_size)
            if not full:
                self._q.append((items, info))
                self._pending += n
                self.stats["submitted"] += n
                self._cv.notify()
            else:
                self.stats["dropped"] += n
            queued = self._pending
        if full:
            reason = "closed" if self._closing else "queue full"
            self.bus.emit("memory", {"dropped": n, "reason": reason, "queued": queued,
                                     "queue_size": self.queue_size, "history": bool(history)},
                          flow_id=flow_id, session=session)
            return False
        return True

    @property
    def _table(self) -> PendingTable:
        """The pending table (journal mode only)."""
        if self.journal is None:
            raise RuntimeError("no pending table")
        return self.journal

    def _submit_journal(self, items: list[MemoryItem], info: dict) -> bool:
        # secrets never reach the disk: redacted before the journal (the id a clearing stub names is
        # the original text's, fixed first); no pause for searches: this makes the turn searchable
        red = [self._redacted(it.text) for it in items]
        items = [_replace(it, text=t, source_id=it.source_id or memory_id(it.text)) for it, (t, _) in zip(items, red)]
        # what the journal holds is redacted: the worker does not redact it again (REDACTED_NOTE), and
        # takes the count of what was removed from here
        info = {**info, REDACTED_NOTE: sum(n for _, n in red)}
        with self._cv:
            if self._closing:
                self.stats["dropped"] += len(items)
                return False
            rid = self._table.add(items, info)
            self.stats["submitted"] += len(items)
        self._queue_indexed(rid, items, info)
        return True

    def _queue_indexed(self, rid: int, items: list[MemoryItem], info: dict) -> None:
        """Journal mode: a submission's row indexed by its words now (``on_indexed``: searchable at once)
        and queued for the storer."""
        try:
            done = self._index([(items, info)], redacted=True)
        except Exception as e:  # a poison submission is dropped, never the caller's problem
            self._error(e, len(items))
            self._table.done([rid])
            return
        done.rows = [rid]
        with self._cv:
            self._indexed.append(done)
            self._indexed_items += done.submitted
            self._cv.notify_all()

    def _has_work(self) -> bool:
        return bool(self._q) or bool(self._indexed) or (self.journal is not None and self.journal.items > 0)

    def flush(self, timeout: float = 30) -> bool:
        """Wait until everything submitted so far is stored (or failed); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._has_work() or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return not (self._has_work() or self._busy)
                self._cv.wait(min(left, 0.5))
        return True

    def close(self, timeout: float = 10) -> None:
        """Store what is queued (up to ``timeout``), then stop the worker after its current batch (with
        a journal, what is left stays there for the next start). Does not close the store."""
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        # a batch still embedding is left to the process's exit (its rows stay pending and are stored
        # at the next start)
        self._thread.join(max(0.2, deadline - time.monotonic()))

    @property
    def pending(self) -> int:
        return self._pending + (self.journal.items if self.journal is not None else 0)

    @property
    def indexed(self) -> int:
        """Items searchable by their words that wait for their vectors (journal mode)."""
        return self._indexed_items

    # --- worker --------------------------------------------------------------------------------------
    def _pause(self) -> None:
        if self.priority is not None:
            self.priority.pause()

    def _run(self) -> None:
        _lower_priority()
        if self.priority is not None:
            self.priority.background()
        if self.journal is not None:  # what the last run left: searchable by words again first
            for rid, items, info in self.journal.recovered_rows():
                self._queue_indexed(rid, items, info)
        if self._backfill:
            self._safe_backfill()
        while True:
            if self.journal is not None:
                if not self._run_journal():
                    return
                continue
            with self._cv:
                while not self._q and not self._closing:
                    self._cv.wait()
                if not self._q and self._closing:
                    return
                batches: list[tuple[list[MemoryItem], dict]] = []
                taken = 0
                while self._q and (not batches or taken + len(self._q[0][0]) <= self.batch_max):
                    b = self._q.popleft()
                    batches.append(b)
                    taken += len(b[0])
                self._pending -= taken
                self._busy = True
            try:
                self._process(batches)
            except Exception as e:  # never let the worker die
                self._error(e, taken)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _run_journal(self) -> bool:
        """The storer (journal mode): one batch of what the submissions indexed, embedded and stored; False
        when closing. Over ``memory.pending_max``, the oldest submissions are stored as text first (not
        embedded: nothing is dropped); once nothing waits, what was stored so is embedded, a batch at a
        time."""
        with self._cv:
            while not self._indexed and not self._closing and not (self.deferred and self._table.items <= 0):
                self._cv.wait(1.0)
            if self._closing:
                return False
            self._busy = True
            taken: list[_Indexed] = []
            excess = self._table.items - self._table.max_items
            over = excess > 0
            if over:  # store the oldest as text until the table is back under its bound
                while self._indexed and excess > 0:
                    taken.append(self._indexed.popleft())
                    excess -= taken[-1].submitted
            else:
                # near the bound, smaller embedding batches: back sooner to store what goes over it as text
                near = self._table.items > self._table.max_items // 2
                max_items = max(1, self.batch_max // 4) if near else self.batch_max
                chars_max = (self.batch_chars // 4 if near else self.batch_chars) if self.batch_chars else None
                n = chars = 0
                while self._indexed:
                    nxt = self._indexed[0]
                    if taken and (n + nxt.submitted > max_items or (chars_max is not None and chars + nxt.chars > chars_max)):
                        break
                    taken.append(self._indexed.popleft())
                    n += nxt.submitted
                    chars += nxt.chars
            self._indexed_items -= sum(t.submitted for t in taken)
        batch = _Indexed.merge(taken)
        try:
            if not taken:
                self._embed_deferred()
                return True
            self._store(batch, in_flight=batch.submitted, text_only=over)
        except Exception as e:  # never let the worker die; the rows are dropped (a poison batch must not loop)
            if self._closing:  # (failed because memory is shutting down: the rows stay for the next start)
                batch.rows = []
            else:
                self._error(e, batch.submitted)
        finally:
            self._table.done(batch.rows)
            with self._cv:
                self._busy = False
                self._cv.notify_all()
        return True

    def _embed_deferred(self) -> None:
        """Embed one batch of what was stored as text under load (see :meth:`_run_journal`)."""
        try:
            moved = self.store.backfill(limit=self.batch_max)
        except Exception as e:
            self._error(e, 0, where="memory.backfill")
            moved = 0
        self.deferred = max(0, self.deferred - moved) if moved else 0
        if moved:
            self.stats["embedded_later"] += moved
            self.bus.emit("memory", {"backfilled": moved, "deferred": self.deferred})

    def _safe_backfill(self) -> None:
        """Before the first turn: embed what was stored without a model, and load the tenants' vector
        indexes (Chroma loads one on its first query; better here than on a request's clock)."""
        try:
            if self.store.available and self.store.embedder is not None and not self.store.read_only:
                moved = self.store.backfill()
                if moved:
                    self.bus.emit("memory", {"backfilled": moved})
                self.store.warm()
        except Exception as e:
            self._error(e, 0, where="memory.backfill")

    def _prepare(self, items: list[MemoryItem], redacted_already: bool = False
                 ) -> tuple[list[MemoryItem], int, list[int], list[MemoryItem]]:
        """(chunks to store, secrets removed, index in ``items`` of each chunk, each item whole and
        redacted: what the originals keep). Each text is redacted once, here, unless it was before
        (``redacted_already``: it came through the journal, which holds only redacted text)."""
        out: list[MemoryItem] = []
        owner: list[int] = []  # index in ``items`` of each prepared item
        wholes: list[MemoryItem] = []
        redacted = 0
        for k, it in enumerate(items):
            source = it.source_id or memory_id(it.text)  # the id a clearing stub names: the original text
            if redacted_already:
                text = it.text
            else:
                text, n = self._redacted(it.text)
                redacted += n
            whole = _replace(it, text=text, source_id=source)
            wholes.append(whole)
            pieces = chunk_text(text, self.chunk_tokens, self.count) if len(text) > self.chunk_tokens else [text]
            if len(pieces) <= 1:
                out.append(whole)
                owner.append(k)
            else:
                out += [_replace(it, text=p, kind="chunk", source_id=source) for p in pieces]
                owner += [k] * len(pieces)
        return out, redacted, owner, wholes

    def _process(self, batches: list[tuple[list[MemoryItem], dict]], in_flight: int = 0, redacted: bool = False,
                 text_only: bool = False) -> None:
        """Index, then store, in one go (without a pending table: one worker thread)."""
        self._store(self._index(batches, redacted), in_flight, text_only)

    def _index(self, batches: list[tuple[list[MemoryItem], dict]], redacted: bool = False) -> _Indexed:
        """Submissions made ready to store: items stored before skipped, the rest redacted (unless
        ``redacted``: from the journal) and chunked; their originals kept; the chunks indexed by their
        words (``on_indexed``). Tagged by :meth:`_store`."""
        t0 = time.perf_counter()
        items: list[MemoryItem] = []
        sub: list[int] = []  # submission of each item
        skipped = [0] * len(batches)
        with self._seen_lock:  # (the storer adds to it meanwhile)
            for b, (its, _) in enumerate(batches):
                for it in its:
                    key = (it.workspace or it.tenant, it.source_id or memory_id(it.text))
                    if key in self._seen:  # stored before: no redaction, no chunking, no lookup
                        self._seen.move_to_end(key)
                        skipped[b] += 1
                        continue
                    items.append(it)
                    sub.append(b)
        self.stats["skipped_seen"] += sum(skipped)
        # (tags are the storer's: words need none)
        prepared, n_red, owner, wholes = self._prepare(items, redacted_already=redacted)
        if redacted:  # counted when the journal took them
            n_red = sum(int(info.get(REDACTED_NOTE) or 0) for _, info in batches)
        if self.on_originals is not None and items:
            try:
                self.on_originals(wholes)
            except Exception as e:
                self._error(e, 0, where="memory.originals")
        if self.on_indexed is not None and prepared:
            try:
                self.on_indexed(prepared)
                self.stats["indexed"] += len(prepared)
            except Exception as e:
                self._error(e, 0, where="memory.index")
        return _Indexed(batches=batches, items=items, sub=sub, skipped=skipped, prepared=prepared, owner=owner,
                        redacted=n_red, ms=(time.perf_counter() - t0) * 1000)

    def _store(self, done: _Indexed, in_flight: int = 0, text_only: bool = False) -> None:
        """Tag, embed and store what :meth:`_index` made (``text_only``: stored now, embedded later)."""
        t0 = time.perf_counter()
        batches = done.batches
        # the embedding lag: how long the batch's oldest item waited since its turn completed
        lag_s = round(max(0.0, time.time() - min((it.ts for its, _ in batches for it in its), default=time.time())), 1)
        items, prepared, redacted = done.items, done.prepared, done.redacted
        if self.tag is not None:
            tagged = set()
            for k, it in enumerate(items):
                if not it.tags:
                    self._pause()
                    it.tags = self.tag(it.text)
                    tagged.add(k)
            for chunk, k in zip(prepared, done.owner):
                if k in tagged:  # the same objects the lexical index holds: their tags appear there too
                    chunk.tags = list(items[k].tags)
        self._pause()
        try:
            new = self.store.add_items(prepared, text_only=text_only)
        except Exception as e:
            self._error(e, len(items))
            return
        with self._seen_lock:
            for it in items:
                self._seen[(it.workspace or it.tenant, it.source_id or memory_id(it.text))] = None
            while len(self._seen) > self.SEEN:
                self._seen.popitem(last=False)
        ms = round(done.ms + (time.perf_counter() - t0) * 1000, 1)
        new_ids = {(_pkey(it), it.id) for it in new}
        self.stats["stored"] += len(prepared)
        self.stats["new"] += len(new)
        if text_only:
            self.deferred += len(new)
            self.stats["stored_text_only"] += len(new)
        self.stats["redacted"] += redacted
        chunks = sum(1 for it in prepared if it.kind == "chunk")
        # what waits after this batch: the journal still counts the batch's rows until they are done
        queued = max(0, self.pending - in_flight)
        sessions = {info["session"] for _, info in batches}
        self.bus.emit("memory", {"ingested": len(prepared), "new": len(new), "ms": ms, "redacted": redacted,
                                 "chunks": chunks, "items": sum(len(b) for b, _ in batches),
                                 "deduplicated": len(prepared) - len(new) + sum(done.skipped), "queued": queued,
                                 "lag_s": lag_s, **({"indexed": self._indexed_items} if self.journal is not None and self.on_indexed is not None else {}),
                                 **({"text_only": len(new), "deferred": self.deferred} if text_only else {})},
                      session=sessions.pop() if len(sessions) == 1 else None)
        self._emit_history(batches, done.sub, done.owner, prepared, new_ids, done.skipped, ms, queued)
        if new and self.on_added is not None:
            try:
                self.on_added(new)
            except Exception as e:
                self._error(e, 0, where="memory.on_added")

    def _emit_history(self, batches, sub, owner, prepared, new_ids, skipped, ms, queued) -> None:
        """One ``ingest`` event per submission of history the proxy had not seen live (the TUI shows it
        as a dimmed row)."""
        if not any(info["history"] for _, info in batches):
            return
        per: list[dict] = [{"items": 0, "chunks": 0, "new": 0, "tags": Counter()} for _ in batches]
        for it, k in zip(prepared, owner):
            p = per[sub[k]]
            p["items"] += 1
            p["chunks"] += it.kind == "chunk"
            p["new"] += (_pkey(it), it.id) in new_ids
            p["tags"].update(it.tags)
        for b, (its, info) in enumerate(batches):
            if not info["history"]:
                continue
            p = per[b]
            turns = [it.turn for it in its]
            self.bus.emit("ingest", {
                "session": info["session"], "items": p["items"], "chunks": p["chunks"], "new": p["new"],
                "deduplicated": p["items"] - p["new"] + skipped[b], "ms": ms, "queued": queued,
                "history": True, "messages": info["messages"], "turn": max(turns) if turns else None,
                "tags": [t for t, _ in p["tags"].most_common(6)]},
                flow_id=info["flow_id"], session=info["session"])

    def _error(self, e: BaseException, n: int, where: str = "memory.ingest") -> None:
        self.stats["errors"] += 1
        msg = f"{type(e).__name__}: {e}"[:500]
        now = time.monotonic()
        last_msg, last_t = self._last_error
        if msg == last_msg and now - last_t < _ERROR_EVERY:
            return  # Chroma down: one event a minute, not one a turn
        self._last_error = (msg, now)
        self.bus.emit("error", {"where": where, "message": msg, "action": f"dropped {n} items" if n else "skipped"})


@dataclass
class _Indexed:
    """Submissions :meth:`Ingestor._index` made ready to store (searchable by their words already when
    the ingestor has ``on_indexed``)."""

    batches: list  # the submissions: (items, info)
    items: list  # their items not stored before
    sub: list  # submission of each item
    skipped: list  # items per submission stored before
    prepared: list  # what is stored: the items redacted and chunked
    owner: list  # index in ``items`` of each prepared item
    redacted: int = 0
    ms: float = 0.0
    rows: list = field(default_factory=list)  # journal rows, done once stored

    @property
    def submitted(self) -> int:
        """Items as the journal counts them (its ``n`` per row)."""
        return sum(len(its) for its, _ in self.batches)

    @property
    def chars(self) -> int:
        return sum(len(it.text) for it in self.prepared)

    @classmethod
    def merge(cls, parts: list[_Indexed]) -> _Indexed:
        """One batch of several (one embedding run and one store call for all)."""
        out = cls(batches=[], items=[], sub=[], skipped=[], prepared=[], owner=[])
        for p in parts:
            nb, ni = len(out.batches), len(out.items)
            out.batches += p.batches
            out.items += p.items
            out.sub += [k + nb for k in p.sub]
            out.skipped += p.skipped
            out.prepared += p.prepared
            out.owner += [k + ni for k in p.owner]
            out.redacted += p.redacted
            out.ms += p.ms
            out.rows += p.rows
        return out


def _pkey(it: MemoryItem) -> str:
    return it.workspace or it.tenant


def _lower_priority() -> None:
    """The worker's thread at nice +5 (on Linux a thread has its own): it yields the CPU to the request
    path (at +10 a busy machine starved it until the queue overflowed)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5))
    except (AttributeError, OSError):
        pass


def _replace(it: MemoryItem, **kw: Any) -> MemoryItem:
    d = dict(it.__dict__)
    d.pop("_digest", None)
    d["tags"] = list(it.tags)
    d.update(kw)
    return MemoryItem(**d)


def _session_of(items: list[MemoryItem]) -> str | None:
    s = {it.session for it in items}
    return s.pop() if len(s) == 1 else None


# --- conversation -> items ------------------------------------------------------------------------------
def items_from_messages(messages: list[dict], api: ApiKind, session: str, tenant: str, start_turn: int,
                        tags: list[str] | None = None, clean_text: dict[int, str] | None = None, *,
                        workspace: str | None = None, ts: float | None = None) -> list[MemoryItem]:
    """One item per message (its text, tool calls included) and one per tool result (tool name resolved
    from the matching tool_use / tool_call in ``messages``), as the API's dialect reads them (``memory_items``).

    ``messages`` are wire dicts (typed models are accepted too); ``messages[i]`` is turn
    ``start_turn + i``. The agents' envelopes are left out (:mod:`~contextwarden.memory.envelopes`),
    system messages too. A message framed as several speakers' turns is one item per turn, the dates
    written before them lifted into ``when`` (:func:`~contextwarden.memory.turns.units`). ``clean_text[turn]`` replaces a message's own text (e.g. the user message without
    the injected memory block); its tool results are still taken from the message. Thinking, images and
    leading system/developer messages (the cached prefix) are not stored.
    """
    tags = list(tags or [])
    when = time.time() if ts is None else ts
    out: list[MemoryItem] = []

    def add(text: str, turn: int, role: str, kind: str, tool: str | None = None) -> None:
        if not (text and text.strip()):
            return
        if kind != "message":
            out.append(MemoryItem(text=text, session=session, tenant=tenant, turn=turn, role=role, kind=kind,
                                  tool=tool, tags=list(tags), ts=when, workspace=workspace))
            return
        if role in ("system", "developer"):
            return  # the client's instructions (Claude Code puts them mid-history too), not the conversation
        for u in units(strip_envelopes(text)):  # the turns it holds, whatever the client's framing (memory.turns)
            out.append(MemoryItem(text=u.text, session=session, tenant=tenant, turn=turn, role=role, kind=kind,
                                  tool=tool, tags=list(tags), ts=when, workspace=workspace, speaker=u.speaker,
                                  when=u.when))

    dialect(api).memory_items(messages, start_turn, clean_text or {}, add)
    return out


