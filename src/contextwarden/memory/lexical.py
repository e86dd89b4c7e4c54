"""BM25 over remembered text, in memory, one partition per tenant, growing as items are stored.

The lexical ranking finds what embeddings miss: exact identifiers, file names, error strings, rare
names. A term's posting list is one ``bytearray`` of (document, term frequency) pairs (appends are cheap;
queries read it through numpy without copying), so adding an item costs microseconds and a query over 100K
items costs a few milliseconds. Nothing the index holds per term is an object the garbage collector
tracks (a ``bytearray``, a tuple of strings): as two ``array`` in a tuple, three per term and tenant, the
memory process held millions of them under load, and each full collection walked them all, every thread
of the process waiting (docs/benchmarks.md, "Fresh under load").
A query term the index has never seen is matched to the closest known term with rapidfuzz (typos,
``recieve``/``receive``), at a discount.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import struct
import threading
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from rapidfuzz import fuzz, process

from ..util.sealing import Sealer, SealError
from .envelopes import searchable
from .items import MemoryItem
from .words import tokenize

MAX_TERMS_PER_DOC = 4000  # a long chunk is indexed on its first terms only
WORDS_KEPT = 50_000  # distinct words whose terms an index remembers (LexicalIndex.add)
POSTING = np.dtype([("doc", "<u4"), ("tf", "<f4")])  # one entry of a posting list (its bytes: _pack)
_pack = struct.Struct("<If").pack
REPLY_WEIGHT = 0.3  # a message is also indexed by the words of the turn before it, each at this share


@dataclass
class LexicalHit:
    item: object  # MemoryItem
    score: float


class _Codes:
    """Each item's session (or project) as a small integer, caught up lazily with the partition's items
    (a snapshot's load fills them directly): what a query scoped to one masks the scores with."""

    def __init__(self, of) -> None:
        self.of = of  # item -> its name (None: no project)
        self.codes = array("I")
        self.ids: dict = {None: 0}  # (code 0: no project; sessions are never None)
        self.counts: Counter = Counter()

    def sync(self, items: list) -> None:
        for it in items[len(self.codes):]:
            code = self.ids.setdefault(self.of(it), len(self.ids))
            self.codes.append(code)
            self.counts[code] += 1

    def count(self, items: list, name) -> int:
        self.sync(items)
        code = self.ids.get(name)
        return 0 if not code else self.counts[code]

    def mask(self, items: list, name) -> np.ndarray:
        self.sync(items)
        return np.frombuffer(self.codes, dtype=np.uint32)[: len(items)] == (self.ids.get(name) or -1)


class _Partition:
    """The BM25 index of one tenant (or workspace)."""

    def __init__(self) -> None:
        self.items: list = []
        self.ids: dict[str, int] = {}
        self.doc_len = array("I")
        self.postings: dict[str, bytearray] = {}  # term -> POSTING entries
        self.total_len = 0
        self.by_prefix: dict[str, list[str]] = {}
        self._norm_key: tuple | None = None
        self._norm_cache = np.zeros(0, dtype=np.float32)
        self.sessions = _Codes(lambda it: str(it.session))
        self.projects = _Codes(lambda it: getattr(it, "project", None) or None)

    def scope(self, project: bool) -> _Codes:
        return self.projects if project else self.sessions

    def session_count(self, session: str) -> int:
        return self.sessions.count(self.items, str(session))

    def session_mask(self, session: str) -> np.ndarray:
        return self.sessions.mask(self.items, str(session))

    def add(self, item, terms: list[str], before: Sequence[str] = ()) -> bool:
        """Index ``item`` by its ``terms`` and, at :data:`REPLY_WEIGHT` each, the terms of the message
        ``before`` it (its length counts them at that share too: "Noted." does not outrank the message it
        acknowledges by being short)."""
        if item.id in self.ids:
            return False
        doc = len(self.items)
        self.ids[item.id] = doc
        self.items.append(item)
        terms, before = terms[:MAX_TERMS_PER_DOC], before[:MAX_TERMS_PER_DOC]
        length = len(terms) + round(REPLY_WEIGHT * len(before))
        self.doc_len.append(length)
        self.total_len += length
        counts: dict[str, float] = dict(Counter(terms))
        for term in before:
            counts[term] = counts.get(term, 0.0) + REPLY_WEIGHT
        for term, tf in counts.items():
            p = self.postings.get(term)
            if p is None:
                p = self.postings[term] = bytearray()
                if len(term) >= 4:
                    self.by_prefix.setdefault(term[:2], []).append(term)
            p += _pack(doc, tf)
        return True

    def fuzzy(self, term: str, cutoff: float) -> tuple[str, float] | None:
        pool = self.by_prefix.get(term[:2])
        if not pool:
            return None
        best = process.extractOne(term, pool, scorer=fuzz.ratio, score_cutoff=cutoff)
        return (best[0], best[1] / 100.0) if best else None

    def scores(self, weighted: dict[str, float], k1: float, b: float, fuzzy_cutoff: float) -> np.ndarray | None:
        n = len(self.items)
        if n == 0:
            return None
        norm = self._norm(k1, b)
        acc = np.zeros(n, dtype=np.float32)
        hit = False
        for term, w in weighted.items():
            p = self.postings.get(term)
            if p is None and fuzzy_cutoff and len(term) >= 5 and not term.isdigit():
                f = self.fuzzy(term, fuzzy_cutoff)
                if f is not None:
                    term, sim = f
                    p = self.postings[term]
                    w *= 0.8 * sim
            if p is None:
                continue
            entries = np.frombuffer(p, dtype=POSTING)
            docs, tf = entries["doc"], entries["tf"]
            df = len(docs)
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            acc[docs] += (w * idf) * tf * (k1 + 1) / (tf + norm[docs])
            hit = True
            del entries, docs, tf  # release the buffer views so the list can grow again
        return acc if hit else None

    def _norm(self, k1: float, b: float) -> np.ndarray:
        """BM25's per-document length normalisation, recomputed only after items were added."""
        key = (len(self.items), k1, b)
        if self._norm_key != key:
            dl = np.array(self.doc_len, dtype=np.float32)
            avgdl = max(1.0, self.total_len / max(1, len(self.items)))
            self._norm_cache = k1 * (1 - b + b * dl / avgdl)
            self._norm_key = key
        return self._norm_cache


class LexicalIndex:
    """BM25 (k1, b) over items, partitioned by tenant; thread-safe; items are added incrementally."""

    def __init__(self, k1: float = 1.2, b: float = 0.75, fuzzy_cutoff: float = 86) -> None:
        self.k1 = k1
        self.b = b
        self.fuzzy_cutoff = fuzzy_cutoff
        self._parts: dict[str, _Partition] = {}
        self._lock = threading.RLock()
        self._neighbours: dict[tuple[str, str, int], list] = {}
        self._words: dict[str, tuple[str, ...]] = {}  # a word's terms (tokenize), for the words seen lately

    def __len__(self) -> int:
        with self._lock:
            return sum(len(p.items) for p in self._parts.values())

    def _named(self, partitions: Iterable[str]) -> list[_Partition]:
        """The partitions of these names that exist, each once (call under the lock)."""
        return [p for name in dict.fromkeys(partitions) if (p := self._parts.get(name)) is not None]

    @staticmethod
    def partition_of(item) -> str:
        return item.workspace or item.tenant

    def add(self, items: Iterable) -> int:
        """Index items (a no-op for ids already indexed: a stored item was indexed by its words when it
        was submitted); returns how many were new."""
        with self._lock:  # in turn order: a message is indexed after the turn it answers (_before)
            new = sorted((it for it in items if not self.contains(it.id, self.partition_of(it))),
                         key=lambda it: (str(it.session), it.turn))
        if len(self._words) > WORDS_KEPT:
            self._words = {}
        prepared = [(it, tokenize(searchable(it.text), self._words)) for it in new]  # tokenise outside the lock
        added = 0
        with self._lock:
            for it, terms in prepared:
                name = self.partition_of(it)
                part = self._parts.setdefault(name, _Partition())
                prev = self._before(name, it)
                if part.add(it, terms, tokenize(searchable(prev.text), self._words) if prev is not None else []):
                    added += 1
                    self._neighbours.setdefault((name, it.session, it.turn), []).append(it)
        return added

    def _around(self, partition: str, item) -> tuple[Any, Any]:
        """The turns said just before and just after a message's (call under the lock): its siblings in the
        client's message (memory.turns), else the last turn of the message before and the first of the next.
        An item not stored yet (being added) comes after its message's stored turns."""
        get = self._neighbours.get
        same = get((partition, item.session, item.turn)) or []
        i = next((k for k, x in enumerate(same) if x.id == item.id), len(same))
        before = same[i - 1] if i else (get((partition, item.session, item.turn - 1)) or [None])[-1]
        after = same[i + 1] if i + 1 < len(same) else (get((partition, item.session, item.turn + 1)) or [None])[0]
        return before, after

    def _before(self, partition: str, item) -> MemoryItem | None:
        """The turn said just before a message's, when it is a message: a reply ("Yes, tomorrow night!") is
        found by the words of what it answers. None for a tool result, or without weight. (Items added
        together are taken in turn order; a rebuild from the store sorts them all first.)"""
        if REPLY_WEIGHT <= 0 or item.kind != "message":
            return None
        prev = self._around(partition, item)[0]
        return prev if prev is not None and prev.kind == "message" else None

    def neighbours(self, item) -> list:
        """The stored items next to ``item`` in its session. A message's turn: the turn said just before and
        the one just after, whether the client sent them in its message (memory.turns) or in the next one,
        so that one turn a message and consecutive turns merged give the same neighbours. Any other item:
        the items of the messages just before and after its own."""
        p = self.partition_of(item)
        with self._lock:
            if item.kind == "message":
                return [x for x in self._around(p, item) if x is not None]
            return [*self._neighbours.get((p, item.session, item.turn - 1), ()), *self._neighbours.get((p, item.session, item.turn + 1), ())]

    def adopt(self, other: LexicalIndex) -> None:
        """Take ``other``'s contents (a loaded snapshot); items added here meanwhile are kept."""
        with self._lock:
            mine = [it for p in self._parts.values() for it in p.items]
            self._parts, self._neighbours = other._parts, other._neighbours
            if mine:
                self.add(mine)

    def contains(self, item_id: str, tenant: str) -> bool:
        with self._lock:
            p = self._parts.get(tenant)
            return p is not None and item_id in p.ids

    def _size(self, partition: str, project: bool, name: str | None) -> int:
        with self._lock:
            part = self._parts.get(partition)
            return 0 if part is None else part.scope(project).count(part.items, name)

    def _items(self, partition: str, project: bool, name: str | None) -> list:
        with self._lock:
            part = self._parts.get(partition)
            if part is None or not part.scope(project).count(part.items, name):
                return []
            return [part.items[i] for i in np.flatnonzero(part.scope(project).mask(part.items, name))]

    def session_size(self, partition: str, session: str) -> int:
        """How many items of ``session`` ``partition`` holds."""
        return self._size(partition, False, str(session))

    def session_items(self, partition: str, session: str) -> list:
        """The items of ``session`` in ``partition``, in the order they were indexed."""
        return self._items(partition, False, str(session))

    def project_size(self, partition: str, project: str) -> int:
        """How many items of ``project`` ``partition`` holds."""
        return self._size(partition, True, project or None)

    def project_items(self, partition: str, project: str) -> list:
        """The items of ``project`` in ``partition``, in the order they were indexed."""
        return self._items(partition, True, project or None)

    def other_sessions(self, partitions: Iterable[str], session: str) -> bool:
        """Whether the partitions hold items of sessions other than ``session``."""
        with self._lock:
            return any(part.session_count(session) < len(part.items) for part in self._named(partitions))

    def df_ratio(self, term: str, partitions: Iterable[str], session: str | None = None) -> tuple[float, int]:
        """Share of the partitions' items (of ``session``'s, when given) that contain ``term``, and how
        many items there are."""
        with self._lock:
            df = total = 0
            for part in self._named(partitions):
                p = part.postings.get(term)
                if session is None:
                    total += len(part.items)
                    df += len(p) // POSTING.itemsize if p is not None else 0
                else:
                    total += part.session_count(session)
                    if p is not None:
                        df += int(np.count_nonzero(part.session_mask(session)[np.frombuffer(p, dtype=POSTING)["doc"]]))
        return (df / total if total else 0.0), total

    def prune_common(self, text: str, partitions: Iterable[str], ratio: float, min_items: int = 50,
                     session: str | None = None) -> str:
        """``text`` without the words that most stored items contain (the two names every message of a
        chat carries, a project's name): they do not tell items apart, yet they dominate a short query's
        embedding. Unchanged when the memory is small or nothing would be left. ``session``: common
        among that session's items (the scope searched first)."""
        partitions = list(partitions)
        if ratio <= 0 or ratio >= 1:
            return text
        kept, dropped = [], 0
        for w in text.split():
            toks = tokenize(w)
            if toks:
                rs = [self.df_ratio(t, partitions, session) for t in toks]
                if rs[0][1] < min_items:
                    return text
                if all(r > ratio for r, _ in rs):
                    dropped += 1
                    continue
            kept.append(w)
        return " ".join(kept) if dropped and len(kept) >= 2 else text

    def query(self, text: str | dict[str, float], partitions: Iterable[str], n: int = 50,
              exclude=None, session: str | None = None, project: str | None = None) -> list[LexicalHit]:
        """Top ``n`` items of the partitions by BM25. ``text`` is a query, or term -> weight.

        ``exclude(item) -> bool`` drops items before the cut (the ones still in the history);
        ``session``: only that session's items; ``project``: only that project's.
        """
        weighted = text if isinstance(text, dict) else query_terms(text)
        if not weighted:
            return []
        hits: list[LexicalHit] = []
        with self._lock:
            for part in self._named(partitions):
                acc = part.scores(weighted, self.k1, self.b, self.fuzzy_cutoff)
                if acc is None:
                    continue
                if session is not None:
                    acc = np.where(part.session_mask(session), acc, 0.0).astype(np.float32)
                if project is not None:
                    acc = np.where(part.projects.mask(part.items, project or None), acc, 0.0).astype(np.float32)
                want = min(len(acc), n * 3 + 16)  # extra room for excluded items
                top = np.argpartition(-acc, want - 1)[:want] if want < len(acc) else np.arange(len(acc))
                top = top[np.argsort(-acc[top], kind="stable")]
                taken = 0
                for i in top:
                    s = float(acc[i])
                    if s <= 0:
                        break
                    item = part.items[i]
                    if exclude is not None and exclude(item):
                        continue
                    hits.append(LexicalHit(item, s))
                    taken += 1
                    if taken >= n:
                        break
        hits.sort(key=lambda h: -h.score)
        return hits[:n]


SNAPSHOT_VERSION = 2  # 2: JSON escapes separate words (an index saved before has other terms)


def save_snapshot(index: LexicalIndex, path: str | os.PathLike, key: dict, sealer: Sealer) -> int:
    """Write the index to ``path`` (numpy ``.npz``, no pickle: arrays, and JSON as bytes), with ``key``
    (what the store looked like: :func:`load_snapshot` refuses a snapshot of another state). Atomic.
    Returns the items written."""
    arrays: dict[str, Any] = {}
    names = []
    n = 0
    with index._lock:
        for pi, (name, part) in enumerate(index._parts.items()):
            names.append(name)
            terms = list(part.postings)
            lens = np.fromiter((len(part.postings[t]) // POSTING.itemsize for t in terms), dtype=np.int64, count=len(terms))
            offsets = np.zeros(len(terms) + 1, dtype=np.int64)
            np.cumsum(lens, out=offsets[1:])
            entries = np.empty(int(offsets[-1]), dtype=POSTING)
            for t, a, b in zip(terms, offsets[:-1], offsets[1:]):
                entries[a:b] = np.frombuffer(part.postings[t], dtype=POSTING)
            arrays[f"p{pi}_docs"] = entries["doc"].copy()
            arrays[f"p{pi}_tf"] = entries["tf"].copy()
            arrays[f"p{pi}_offsets"] = offsets
            arrays[f"p{pi}_doclen"] = np.frombuffer(part.doc_len, dtype=np.uint32).copy()
            arrays[f"p{pi}_terms"] = np.frombuffer(orjson.dumps(terms), dtype=np.uint8)
            arrays[f"p{pi}_items"] = np.frombuffer(orjson.dumps([it.to_record() for it in part.items]), dtype=np.uint8)
            n += len(part.items)
    meta = {"version": SNAPSHOT_VERSION, "key": key, "partitions": names, "k1": index.k1, "b": index.b}
    arrays["meta"] = np.frombuffer(orjson.dumps(meta), dtype=np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(path.name + ".tmp*"):  # a save cut short by a shutdown's budget
        with contextlib.suppress(OSError):
            stale.unlink()
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with open(tmp, "wb") as f:
        f.write(sealer.seal(buf.getvalue()))  # holds every item's text: sealed like the store
    os.replace(tmp, path)
    return n


def load_snapshot(path: str | os.PathLike, key: dict | None, sealer: Sealer) -> LexicalIndex | None:
    """The index saved by :func:`save_snapshot`, or None when there is none, it is unreadable, or it was
    saved for another ``key`` (the store changed since)."""
    try:
        z = np.load(io.BytesIO(sealer.open(Path(path).read_bytes())), allow_pickle=False)
    except (OSError, ValueError, SealError):
        return None  # (sealed with another key: rebuilt from the store, which then says what is wrong)
    with z:
        try:
            meta = orjson.loads(z["meta"].tobytes())
            if meta.get("version") != SNAPSHOT_VERSION or (key is not None and meta.get("key") != key):
                return None
            index = LexicalIndex(k1=meta["k1"], b=meta["b"])
            for pi, name in enumerate(meta["partitions"]):
                part = _Partition()
                recs = orjson.loads(z[f"p{pi}_items"].tobytes())
                for rec in recs:
                    it = MemoryItem.from_record(rec)
                    if rec.get("hash"):
                        it._digest = (it.text, rec["hash"])  # no re-hashing of 100K texts
                    part.ids[rec["id"]] = len(part.items)
                    part.items.append(it)
                    index._neighbours.setdefault((name, it.session, it.turn), []).append(it)
                part.doc_len = array("I", z[f"p{pi}_doclen"].tobytes())
                part.total_len = int(sum(part.doc_len))
                terms = orjson.loads(z[f"p{pi}_terms"].tobytes())
                offsets = z[f"p{pi}_offsets"]
                entries = np.empty(len(z[f"p{pi}_docs"]), dtype=POSTING)
                entries["doc"], entries["tf"] = z[f"p{pi}_docs"], z[f"p{pi}_tf"]
                raw, size = memoryview(entries.tobytes()), POSTING.itemsize
                for t, a, b in zip(terms, offsets[:-1].tolist(), offsets[1:].tolist()):
                    part.postings[t] = bytearray(raw[a * size:b * size])
                    if len(t) >= 4:
                        part.by_prefix.setdefault(t[:2], []).append(t)
                index._parts[name] = part
        except (KeyError, ValueError, TypeError, orjson.JSONDecodeError):
            return None
    return index


def query_terms(text: str, weight: float = 1.0) -> dict[str, float]:
    """Query terms with weights (repeats count, sub-linearly)."""
    c = Counter(tokenize(text))
    return {t: weight * (1 + math.log(k)) for t, k in c.items()}


def combine_terms(*weighted: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for w in weighted:
        for t, v in w.items():
            out[t] = out.get(t, 0.0) + v
    return out
