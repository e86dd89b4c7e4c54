"""Getting completed turns into the store, off the request path, words first.

The memory stage's ``cw_turn_complete`` hook turns the conversation into items
(:func:`items_from_messages`) and hands them to :meth:`Ingestor.submit`, which never waits for the store:
it redacts each text (secrets never reach the disk), writes the submission to the pending table
(``pending.py``), skips texts stored before, chunks the rest, keeps each original whole for recall by id
(``on_originals``) and indexes the chunks by their words (``on_indexed``): the turn is searchable as soon
as the call returns. One worker thread, the *storer*, then tags, embeds and stores what waits, oldest
first, and deletes its rows: on a busy machine vectors lag (``lag_s``, ``indexed``), words do not.

Each stored batch is a ``memory`` event (``ingested``, ``new``, ``deduplicated``, ``chunks``, ``ms``,
``queued``); history the proxy had not seen live is also an ``ingest`` event (``history: true``). Chroma
failures become ``error`` events, never exceptions in callers.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..models.base import ApiKind
from ..util.lru import LRU
from ..util.redact import redact_secrets
from ..wire.dialects import dialect
from .chunking import chunk_text, proxy_tokens
from .envelopes import strip_envelopes
from .ids import memory_id
from .items import MemoryItem
from .pending import PendingTable
from .phatic import content_words
from .turns import units

if TYPE_CHECKING:
    from ..core.events import EventBus
    from .store import MemoryStore

_ERROR_EVERY = 60.0  # seconds between repeated identical error events


REDACTED_NOTE = "redacted"  # a submission's info: how many secrets were removed when it was submitted


class Ingestor:
    """The submission (:meth:`submit`) and the storer (one worker thread); see the module docstring.

    ``journal``: the pending table (the memory process keeps it on disk, so a shutdown leaves what waits
    for the next start; by default it is in memory). Past its ``max_items``, the storer stores the oldest
    submissions as text (searchable by words and id, ``text_only`` in the event) and embeds them once
    nothing waits: nothing is dropped. The storer takes at most ``batch_max`` submitted items (and
    ``batch_chars`` characters) at a time: what a shutdown may wait for. ``on_added`` receives the
    items that were new to the store (the scoped vector ranking reads their vectors then).
    """

    SEEN = 100_000  # original texts remembered as stored: a re-sent history costs a set lookup

    def __init__(self, store: MemoryStore, bus: EventBus,
                 on_added: Callable[[list[MemoryItem]], object] | None = None, *,
                 journal: PendingTable | None = None, chunk_tokens: int | None = None,
                 count: Callable[[str], int] | None = None, backfill: bool = True, batch_max: int = 256,
                 batch_chars: int | None = None,
                 tag: Callable[[str], list[str]] | None = None,
                 on_originals: Callable[[list[MemoryItem]], None] | None = None,
                 on_indexed: Callable[[list[MemoryItem]], object] | None = None,
                 redact: Callable[[str], tuple[str, int]] | None = None, quiet_s: float = 0.0) -> None:
        self.store = store
        self.bus = bus
        self.journal = journal if journal is not None else PendingTable()
        self.on_added = on_added
        self.on_originals = on_originals
        self.on_indexed = on_indexed
        self._redact = redact or redact_secrets  # or the memory service's remembered one
        self.chunk_tokens = int(chunk_tokens or getattr(store.settings, "chunk_tokens", 240) or 240)
        if count is None:  # the model's own word pieces when it is there, a safe over-estimate otherwise
            tc = getattr(store.embedder, "token_counter", None)
            count = tc() if tc is not None else proxy_tokens
        self.count = count
        self.stats = {"submitted": 0, "dropped": 0, "stored": 0, "new": 0, "redacted": 0, "errors": 0,
                      "skipped_seen": 0, "stored_text_only": 0, "embedded_later": 0,
                      "indexed": 0}
        self.deferred = 0  # items stored as text under load, not embedded yet
        self._busy = False
        self._closing = False
        self._cv = threading.Condition()
        self._last_error: tuple[str, float] = ("", 0.0)
        self._seen = LRU(self.SEEN)  # (partition, source hash) stored -> True
        self._backfill = backfill
        self.quiet_s = quiet_s  # the storer embeds once no call (a submission, a search) came for this long
        self._last_call = 0.0
        self.batch_max = max(1, int(batch_max))
        self.batch_chars = batch_chars
        self.tag = tag  # tags items that come untagged (the memory process tags off the proxy)
        # submissions indexed by their words, oldest first, that the storer has not stored yet (one per
        # journal row; their rows stay in the journal until stored)
        self._indexed: deque[_Indexed] = deque()
        self._indexed_items = 0
        self._thread = threading.Thread(target=self._run, name="cw-memory-ingest", daemon=True)
        self._thread.start()

    # --- the submission (any thread; never waits for the store) ---------------------------------------
    def submit(self, items: list[MemoryItem], *, flow_id: str | None = None, history: bool = False,
               messages: int | None = None) -> bool:
        """Take ``items``: searchable by their words when this returns; False once closing.

        ``history``: the items come from a conversation's history the proxy had not seen live (the first
        request of a resumed session); once stored, an ``ingest`` event says so (``messages`` of them).
        """
        self.touch()
        items = [it for it in items if it.text and it.text.strip()]
        if not items:
            return True
        # redacted before the journal; the id a clearing stub names is the original text's, fixed first
        red = [self._redact(it.text) for it in items]
        items = [_replace(it, text=t, source_id=it.source_id or memory_id(it.text)) for it, (t, _) in zip(items, red)]
        info = {"flow_id": flow_id, "history": bool(history), "messages": messages, "session": _only({it.session for it in items}),
                REDACTED_NOTE: sum(n for _, n in red)}
        with self._cv:
            if self._closing:
                self.stats["dropped"] += len(items)
                return False
            rid = self.journal.add(items, info)
            self.stats["submitted"] += len(items)
        self._queue_indexed(rid, items, info)
        return True

    def _queue_indexed(self, rid: int, items: list[MemoryItem], info: dict) -> None:
        """A submission's row indexed by its words now and queued for the storer."""
        try:
            done = self._index(items, info, rid)
        except Exception as e:  # a poison submission is dropped, never the caller's problem
            self._error(e, len(items))
            self.journal.done([rid])
            return
        with self._cv:
            self._indexed.append(done)
            self._indexed_items += done.submitted
            self._cv.notify_all()

    def touch(self) -> None:
        """A call came (a search, a submission): the storer waits ``quiet_s`` more before its next batch."""
        self._last_call = time.monotonic()

    def _has_work(self) -> bool:
        return bool(self._indexed) or self.journal.items > 0

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
        """Store what waits (up to ``timeout``), then stop the storer after its current batch (what is
        left stays in the journal). Does not close the store nor the journal."""
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        # a batch still embedding is left to the process's exit (its rows stay pending)
        self._thread.join(max(0.2, deadline - time.monotonic()))

    @property
    def pending(self) -> int:
        return self.journal.items

    @property
    def indexed(self) -> int:
        """Items searchable by their words that wait for their vectors."""
        return self._indexed_items

    # --- the storer ----------------------------------------------------------------------------------
    def is_storer(self) -> bool:
        return threading.current_thread() is self._thread

    def _run(self) -> None:
        _lower_priority()
        for rid, items, info in self.journal.recovered_rows():  # what the last run left: searchable again first
            self._queue_indexed(rid, items, info)
        if self._backfill:
            self._safe_backfill()
        while self._store_next():
            pass

    def _store_next(self) -> bool:
        """One batch of what the submissions indexed, embedded and stored; False when closing. Over the
        journal's ``max_items``, the oldest submissions are stored as text first (not embedded: nothing is
        dropped); once nothing waits, what was stored so is embedded, a batch at a time."""
        table = self.journal
        with self._cv:
            while not self._indexed and not self._closing and not (self.deferred and table.items <= 0):
                self._cv.wait(1.0)
            # while calls keep coming the vectors wait (the items are searchable by their words already): a
            # batch's embedding and store take CPU the requests want, even at the idle class
            # (docs/benchmarks.md); what goes over the table's bound is stored as text at once
            while not self._closing and table.items <= table.max_items \
                    and (wait := self._last_call + self.quiet_s - time.monotonic()) > 0:
                self._cv.wait(wait)
            if self._closing:
                return False
            self._busy = True
            taken: list[_Indexed] = []
            excess = table.items - table.max_items
            over = excess > 0
            if over:  # store the oldest as text until the table is back under its bound
                while self._indexed and excess > 0:
                    taken.append(self._indexed.popleft())
                    excess -= taken[-1].submitted
            else:
                # near the bound, smaller embedding batches: back sooner to store what goes over it as text
                near = table.items > table.max_items // 2
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
        rows = [t.row for t in taken]
        try:
            if not taken:
                self._embed_deferred()
                return True
            self._store(taken, text_only=over)
        except Exception as e:  # never let the worker die; the rows are dropped (a poison batch must not loop)
            if self._closing:  # (failed because memory is shutting down: the rows stay for the next start)
                rows = []
            else:
                self._error(e, sum(t.submitted for t in taken))
        finally:
            table.done(rows)
            with self._cv:
                self._busy = False
                self._cv.notify_all()
        return True

    def _embed_deferred(self) -> None:
        """Embed one batch of what was stored as text under load (see :meth:`_store_next`)."""
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

    def _index(self, its: list[MemoryItem], info: dict, row: int) -> _Indexed:
        """A submission (redacted) made ready to store: items stored before skipped, the rest chunked
        (sizes in the model's word pieces); their originals kept; the chunks indexed by their words
        (``on_indexed``). Tagged by :meth:`_store`."""
        t0 = time.perf_counter()
        fresh = [it for it in its if self._seen.get(_seen_key(it)) is None]  # (stored before: no chunking, no lookup)
        self.stats["skipped_seen"] += len(its) - len(fresh)
        prepared: list[MemoryItem] = []
        owner: list[int] = []  # index in ``fresh`` of each prepared item
        for k, it in enumerate(fresh):
            pieces = chunk_text(it.text, self.chunk_tokens, self.count) if len(it.text) > self.chunk_tokens else [it.text]
            prepared += [it] if len(pieces) <= 1 else [_replace(it, text=p, kind="chunk") for p in pieces]
            owner += [k] * max(1, len(pieces))
        if self.on_originals is not None and fresh:
            try:
                self.on_originals(fresh)
            except Exception as e:
                self._error(e, 0, where="memory.originals")
        if self.on_indexed is not None and prepared:
            try:
                self.on_indexed(prepared)
                self.stats["indexed"] += len(prepared)
            except Exception as e:
                self._error(e, 0, where="memory.index")
        return _Indexed(its, info, fresh, prepared, owner, (time.perf_counter() - t0) * 1000, row)

    def _store(self, parts: list[_Indexed], text_only: bool = False) -> None:
        """Tag, embed and store what :meth:`_index` made of some submissions, in one go (``text_only``:
        stored now, embedded later): a ``memory`` event, and an ``ingest`` event per submission of history
        the proxy had not seen live (the TUI shows it as a dimmed row)."""
        t0 = time.perf_counter()
        # the embedding lag: how long the batch's oldest item waited since its turn completed
        lag_s = round(max(0.0, time.time() - min(it.ts for p in parts for it in p.items)), 1)
        for p in parts:
            if self.tag is not None:
                for it in p.fresh:
                    if not it.tags:
                        it.tags = self.tag(strip_envelopes(it.text))  # (a tool result's: Claude Code's reminder, Codex's head)
                for chunk, k in zip(p.prepared, p.owner):  # the objects the lexical index holds: tagged there too
                    chunk.tags = list(p.fresh[k].tags)
        prepared = [it for p in parts for it in p.prepared]
        try:
            new = self.store.add_items(prepared, text_only=text_only)
        except Exception as e:
            self._error(e, sum(len(p.fresh) for p in parts))
            return
        for it in (it for p in parts for it in p.fresh):
            self._seen.put(_seen_key(it), True)
        ms = round(sum(p.ms for p in parts) + (time.perf_counter() - t0) * 1000, 1)
        new_ids = {(_pkey(it), it.id) for it in new}
        redacted = sum(int(p.info.get(REDACTED_NOTE) or 0) for p in parts)
        self.stats["stored"] += len(prepared)
        self.stats["new"] += len(new)
        if text_only:
            self.deferred += len(new)
            self.stats["stored_text_only"] += len(new)
        self.stats["redacted"] += redacted
        # what waits after this batch: the journal still counts the batch's rows until they are done
        queued = max(0, self.pending - sum(p.submitted for p in parts))
        self.bus.emit("memory", {"ingested": len(prepared), "new": len(new), "ms": ms, "redacted": redacted,
                                 "chunks": sum(it.kind == "chunk" for it in prepared),
                                 "items": sum(p.submitted for p in parts),
                                 "deduplicated": len(prepared) - len(new) + sum(p.skipped for p in parts),
                                 "queued": queued, "lag_s": lag_s, "indexed": self._indexed_items,
                                 **({"text_only": len(new), "deferred": self.deferred} if text_only else {})},
                      session=_only({p.info["session"] for p in parts}))
        for p in parts:
            if p.info["history"]:
                fresh_new = sum((_pkey(it), it.id) in new_ids for it in p.prepared)
                tags = Counter(t for it in p.prepared for t in it.tags)
                self.bus.emit("ingest", {
                    "session": p.info["session"], "items": len(p.prepared), "new": fresh_new, "ms": ms,
                    "chunks": sum(it.kind == "chunk" for it in p.prepared), "queued": queued,
                    "deduplicated": len(p.prepared) - fresh_new + p.skipped, "history": True,
                    "messages": p.info["messages"], "turn": max(it.turn for it in p.items),
                    "tags": [t for t, _ in tags.most_common(6)]},
                    flow_id=p.info["flow_id"], session=p.info["session"])
        if new and self.on_added is not None:
            try:
                self.on_added(new)
            except Exception as e:
                self._error(e, 0, where="memory.on_added")

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
    """A submission :meth:`Ingestor._index` made ready to store (searchable by its words already)."""

    items: list[MemoryItem]  # as submitted (redacted)
    info: dict
    fresh: list[MemoryItem]  # its items not stored before
    prepared: list[MemoryItem]  # what is stored: ``fresh`` chunked
    owner: list[int]  # index in ``fresh`` of each prepared item
    ms: float
    row: int  # its journal row, done once stored

    @property
    def submitted(self) -> int:
        """Items as the journal counts them."""
        return len(self.items)

    @property
    def skipped(self) -> int:
        return len(self.items) - len(self.fresh)

    @property
    def chars(self) -> int:
        return sum(len(it.text) for it in self.prepared)


def _seen_key(it: MemoryItem) -> tuple[str, str]:
    return (it.workspace or it.tenant, it.source_id or memory_id(it.text))


def _pkey(it: MemoryItem) -> str:
    return it.workspace or it.tenant


def _lower_priority() -> None:
    """The worker's thread at nice +5 (on Linux a thread has its own): it yields the CPU to the request
    path (at +10 a busy machine starved it until the queue overflowed)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5))


def _replace(it: MemoryItem, **kw: Any) -> MemoryItem:
    d = dict(it.__dict__)
    d.pop("_digest", None)
    d["tags"] = list(it.tags)
    d.update(kw)
    return MemoryItem(**d)


def _only(values: set[str | None]) -> str | None:
    """The one value of ``values``; None when they differ."""
    return values.pop() if len(values) == 1 else None


# --- conversation -> items ------------------------------------------------------------------------------
def items_from_messages(messages: list[dict], api: ApiKind, session: str, tenant: str, start_turn: int,
                        tags: list[str] | None = None, clean_text: dict[int, str] | None = None, *,
                        workspace: str | None = None, ts: float | None = None) -> list[MemoryItem]:
    """One item per message (its text, tool calls included) and one per tool result (tool name resolved
    from the matching tool_use / tool_call in ``messages``), as the API's dialect reads them (``memory_items``).

    ``messages`` are wire dicts (typed models are accepted too); ``messages[i]`` is turn
    ``start_turn + i``. The agents' envelopes are left out (:mod:`~contextwarden.memory.envelopes`),
    system messages too, and so is a turn without content words (:mod:`~contextwarden.memory.phatic`). A message framed as several speakers' turns is one item per turn, the dates
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
            if not content_words(u.text[len(u.speaker) + 1:] if u.speaker else u.text):
                continue  # "Thanks!", "Caroline: You're welcome.": nothing to recall it by, nothing it tells
            out.append(MemoryItem(text=u.text, session=session, tenant=tenant, turn=turn, role=role, kind=kind,
                                  tool=tool, tags=list(tags), ts=when, workspace=workspace, speaker=u.speaker,
                                  when=u.when))

    dialect(api).memory_items(messages, start_turn, clean_text or {}, add)
    return out


