"""Hybrid retrieval: vector (Chroma) and lexical (BM25) rankings fused by reciprocal rank fusion.

Only items the outgoing request no longer holds are candidates (what the history still has needs no
memory), only within the caller's tenant (plus the profile's shared workspace), and the selection stops
at ``memory.top_k`` items or the token budget, whichever comes first.

Reciprocal rank fusion scores an item ``sum(w / (k + rank))`` over the rankings it appears in: it needs
no score calibration between a cosine similarity and a BM25 score, and an item both rankings agree on
beats one that only one of them likes.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import hashlib
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..models.base import ApiKind
from ..util.lru import LRU
from ..wire.dialects import dialect
from .asides import Asides, Pieces
from .envelopes import searchable, strip_envelopes
from .ids import content_hash, id_of_hash
from .inject import strip_blocks
from .items import MemoryItem
from .lexical import combine_terms, query_terms
from .phatic import content_words
from .related import RelatedWords
from .scope import SCOPE_MAX, SessionVectors
from .tagger import tag_key
from .turns import near, query_text, spans_in, undated, unit_texts
from .words import tokenize

_BULLET = re.compile(r"^(?:[-*>•]+|\d+[.)])\s+")
# a question about the one asking ("How long have I been in my current role?"): in a chat with an assistant
# (no speaker headers, no tools) what they told of themselves is in their own turns
_FIRST_PERSON = re.compile(r"\b(?:i|my|me|mine|myself)\b", re.I)
DATE_SLACK_DAYS = 7  # a question's day finds the turns dated this close to it (LoCoMo: 0-4 days later)
MIN_LINE = 16  # shorter lines are too common to say an item is in the history
AGREED_DEPTH = 5  # a hit in the top this many of both rankings, on a word of the question, is agreed (agreed())
AGREED_SIMILARITY = 0.1  # ... with at least this cosine similarity
UNEMBEDDED_JUDGED = 3  # when no candidate has a vector yet: the first this many are embedded for the relevance floor


def normalise(text: str) -> str:
    return " ".join(text.split())


_BULLET_START = tuple("-*>•0123456789")
_DATED_START = tuple("([0123456789")


def _line_key(line: str) -> str:
    """A line for comparison: whitespace-normalised, without a list bullet (a summary quotes a message
    as "- <message>") or a date before a speaker's name (memory.turns stores the turn without it)."""
    n = " ".join(line.split())
    n = _BULLET.sub("", n) if n.startswith(_BULLET_START) else n
    return undated(n) if n.startswith(_DATED_START) else n


def text_keys_cache() -> LRU:
    """A cache of texts' keys (:class:`HistoryIndex`), up to 16M characters: the runtime's
    (``memory.text_keys``) for the request's history, the memory service's for its candidates."""
    return LRU(16_000_000, size=len)


def _stable_hash(s: str) -> int:
    """A line's hash, the same in every process (``hash()`` is salted per process, and the memory
    service, in its own process, tests the proxy's HistoryIndex)."""
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little", signed=True)


def _text_keys_of(text: str) -> tuple[tuple[str, ...], frozenset[int]]:
    lines = frozenset(_stable_hash(n) for n in (_line_key(x) for x in text.splitlines()) if len(n) >= MIN_LINE)
    # and the turns it holds as memory.turns stores them (a dated or merged message holds its items)
    return ((content_hash(text), content_hash(normalise(text)), *map(content_hash, unit_texts(text))), lines)


class HistoryIndex:
    """What the outgoing request still holds, to tell whether a stored item is already in it.

    An item is in the history when its whole (whitespace-normalised) text is a text of the request,
    when the text it was cut from is (its ``source_id``: a chunk of a long message or tool call), or
    when nearly all of its lines are lines of the request (a chunk of a tool result still there).
    Lookups are set probes, so checking a candidate costs microseconds whatever the history's size.
    A text's keys (hashes of the whole text, hashes of its long lines) come from ``keys``: a history is
    mostly the same texts request after request, so each is split and hashed once. The cache is not
    sent with the index: the memory service gives it its own (:meth:`using`).
    """

    def __init__(self, texts: Iterable[str] = (), keys: LRU | None = None) -> None:
        self.hashes: set[str] = set()
        self.lines: set[int] = set()
        self.sources: set[str] = set()  # the memory ids of its texts: a chunk names its whole's (source_id)
        self.keys = keys if keys is not None else text_keys_cache()
        for t in texts:
            self.add(t)

    def __getstate__(self) -> dict:
        return {"hashes": self.hashes, "lines": self.lines, "sources": self.sources}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, keys=text_keys_cache())

    def using(self, keys: LRU) -> HistoryIndex:
        """The same index, its texts' keys cached in ``keys``."""
        out = copy.copy(self)
        out.keys = keys
        return out

    def with_texts(self, texts: Iterable[str]) -> HistoryIndex:
        """A new index of this one's texts and ``texts``; this one is left as it is (it may be shared)."""
        out = HistoryIndex(texts, keys=self.keys)  # (not copy.copy: that goes through __setstate__, a new memo)
        out.hashes |= self.hashes
        out.lines |= self.lines
        out.sources |= self.sources
        return out

    def _text_keys(self, text: str) -> tuple[tuple[str, ...], frozenset[int]]:
        return self.keys.get(text, _text_keys_of, text)

    def add(self, text: str) -> None:
        if not text:
            return
        hashes, lines = self._text_keys(text)
        self.hashes.update(hashes)
        self.lines |= lines
        self.sources.add(id_of_hash(hashes[0]))

    def __contains__(self, item) -> bool:
        if getattr(item, "source_id", None) in self.sources:  # a chunk of a message the request holds
            return True
        text = item.text if hasattr(item, "text") else str(item)
        hashes, lines = self._text_keys(text)  # cached: the same candidates come back request after request
        if hashes[0] in self.hashes or hashes[1] in self.hashes:
            return True
        return bool(lines) and len(lines & self.lines) >= max(1, math.ceil(0.8 * len(lines)))

    __call__ = __contains__  # (a search's ``exclude``)


# --- reading a request ----------------------------------------------------------------------------------
def history_items(api: ApiKind, body) -> list:
    """The history list of a wire dict or typed request (Responses ``input`` string -> one item)."""
    key = dialect(api).history_key
    v = body.get(key) if isinstance(body, dict) else getattr(body, key, None)
    if isinstance(v, str):
        return [{"role": "user", "content": v}]
    return list(v) if isinstance(v, list) else []


def _plain(m):
    return m.wire() if hasattr(m, "wire") else m


def role_of(m) -> str:
    m = m if isinstance(m, dict) else (m.wire() if hasattr(m, "wire") else {})
    role = m.get("role")
    if role is None and isinstance(m.get("type"), str) and m["type"] != "message":
        return "tool" if m["type"].endswith("_output") else "assistant"
    return str(role or "user")


def human_text(api: ApiKind, m) -> str:
    """What a person wrote in a message: its text blocks/parts, not tool calls or tool results."""
    m = _plain(m)
    if isinstance(m, str):
        return m
    if not isinstance(m, dict):
        return ""
    if m.get("type") not in (None, "message") or m.get("role") in ("tool", "function"):  # (Responses: calls, outputs)
        return ""
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        return "\n".join(p["text"] for p in c if isinstance(p, dict) and p.get("type") in ("text", "input_text", "output_text")
                         and isinstance(p.get("text"), str))
    return ""


def history_texts(api: ApiKind, request) -> list[str]:
    """Every text of the outgoing request a stored item could equal: messages, text blocks, tool calls
    and tool results (each tool result is an item of its own): the dialect's ``item_texts``."""
    return message_texts(api, history_items(api, request))


def message_texts(api: ApiKind, messages: Iterable[Any]) -> list[str]:
    """:func:`history_texts` of some of a history's messages."""
    texts = dialect(api).item_texts
    out: list[str] = []
    for m in messages:
        texts(m, out)
    return out


def _cleaner(text: str, clean: str | None) -> str:
    """The strip stage's cleaned text when it is the same message minus envelopes (its text of a
    message with tool results also holds the results, which are not a query)."""
    return clean if clean and clean.strip() and len(clean) <= len(text) else text


def build_query(api: ApiKind, messages: list, clean_text: dict[int, str] | None = None,
                context_messages: int = 2, context_chars: int = 1500) -> tuple[Query | None, int | None]:
    """The query for a request: the last user message with text a person wrote (cleaned of channel
    envelopes), and the few messages before it as context. Returns (query, index of that message)."""
    clean_text = clean_text or {}
    for i in range(len(messages) - 1, -1, -1):
        if role_of(messages[i]) != "user":
            continue
        text = human_text(api, messages[i])
        if not text.strip():
            continue  # tool results only: the task is further up
        text = query_text(strip_envelopes(_cleaner(text, clean_text.get(i))))
        ctx_parts = []
        for j in range(i - 1, max(-1, i - 1 - context_messages), -1):
            if role_of(messages[j]) in ("system", "developer"):
                continue
            t = strip_envelopes(_cleaner(human_text(api, messages[j]), clean_text.get(j)))
            if t.strip():
                ctx_parts.append(strip_blocks(t)[-context_chars:])
        return Query(strip_blocks(text), "\n".join(reversed(ctx_parts))[-context_chars:]), i
    return None, None


@dataclass
class Query:
    """What to look for: the message being answered now, and a little of what came just before."""

    text: str
    context: str = ""

    def vector_text(self, limit: int = 600) -> str:
        """The text embedded: a long message's start and end, where the question usually is (the
        model's time grows faster than linearly with its input, on the request path; BM25 reads all)."""
        t = self.text.strip()
        if len(t) > limit:
            t = t[: limit // 2] + " … " + t[-limit // 2:]
        return t


@dataclass
class Hit:
    """A retrieved item and why: its fused score and its place in each ranking."""

    item: MemoryItem
    fused: float = 0.0
    vector: float | None = None  # cosine similarity
    lexical: float | None = None  # BM25 score
    vector_rank: int | None = None
    lexical_rank: int | None = None
    tokens: int = 0
    neighbour_of: str | None = None  # added as context of another hit

    def scores(self) -> dict:
        return {"fused": round(self.fused, 5),
                "vector": None if self.vector is None else round(self.vector, 4),
                "lexical": None if self.lexical is None else round(self.lexical, 3),
                "vector_rank": self.vector_rank, "lexical_rank": self.lexical_rank}


@dataclass
class Retrieval:
    """The outcome of one retrieval, for the ``memory`` event and ``contextwarden search``."""

    hits: list[Hit] = field(default_factory=list)
    candidates: int = 0
    in_history: int = 0
    active: int = 0  # candidates skipped because their topics are active in the history
    tokens: int = 0
    budget: int = 0
    ms: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    skipped: str | None = None
    error: str | None = None
    mode: str = "hybrid"  # hybrid | lexical | vector
    vector_query: str = ""  # the text embedded (the query less the words most items contain)


@dataclass(eq=False)
class Vectors:
    """A search's half that no ``exclude`` changes (:meth:`Retriever.start`): its rankings' scopes and
    the vector ranking, running (``future``) or done (``result``)."""

    key: tuple
    session: str | None = None  # the session searched from (its related words: Retriever._terms)
    mode: str = "lexical"  # "hybrid" once a vector ranking is started
    vector_query: str = ""
    use_context: bool = False
    partitions: list = field(default_factory=list)
    scoped: bool = False
    in_project: bool = False
    future: cf.Future | None = None
    result: list | None = None
    timings: dict[str, float] = field(default_factory=dict)
    embedding: np.ndarray | None = None  # the query's, once the vector half has it
    terms: dict[str, float] | None = None  # the BM25 query, once made (Retriever._terms)

    @staticmethod
    def key_of(query: Query, tenants: list[str], workspace: str | None, n: int | None, session: str | None,
               project: str | None) -> tuple:
        """What a search's vector half depends on: a start is a search's only when these are the same."""
        return (query.text, query.context, tuple(tenants), workspace, n, session, project)


def rrf(rankings: list[tuple[list[str], float]], k: float) -> dict[str, float]:
    """Reciprocal rank fusion of ranked id lists, each with a weight."""
    fused: dict[str, float] = {}
    for ids, weight in rankings:
        for rank, key in enumerate(ids, start=1):
            fused[key] = fused.get(key, 0.0) + weight / (k + rank)
    return fused


class Retriever:
    """Runs both rankings and fuses them. ``store`` may be None or unavailable (lexical only);
    ``embedder`` None means lexical only; ``pool`` runs the Chroma query so it can time out."""

    def __init__(self, store, lexical, embedder, pool: cf.Executor | None, settings, scope=None,
                 related: RelatedWords | None = None, asides: Asides | None = None,
                 pieces: Pieces | None = None) -> None:
        self.store = store
        self.lexical = lexical
        self.embedder = embedder
        self.pool = pool
        self.settings = settings  # MemorySection
        # the current session's exact vector ranking (memory.scope.SessionVectors; made here when None)
        self.scope = scope
        self.related = related  # the sessions' words by embedding (memory.related; None: no related words)
        self.asides = asides  # the sentences of the person's turns by embedding (memory.asides; None: none)
        self.pieces = pieces  # the word pieces of the participants' turns (memory.asides; None: none)

    def start(self, query: Query, tenants: list[str], *, workspace: str | None = None, n: int | None = None,
              session: str | None = None, project: str | None = None) -> Vectors:
        """The half of a search that no ``exclude`` changes: which rankings it has (scoped to the
        session, the project) and the vector ranking, started in the pool (embedding the query and the
        vector query). :meth:`search` with ``vectors=`` finishes it; started as soon as the request is
        read (``memory.prefetch``), the embedding runs while the other stages do."""
        s = self.settings
        v = Vectors(key=Vectors.key_of(query, tenants, workspace, n, session, project), session=session)
        n = n or s.candidates
        qtext = query.vector_text()
        # a follow-up ("and the tests?") means little alone: the turns before it join the query then
        v.use_context = bool(query.context.strip()) and s.context_weight > 0 and len(query_terms(query.text)) < s.context_below
        partitions = v.partitions = list(tenants) + ([workspace] if workspace else [])
        # the current session first: its own rankings, and the other sessions' at a lower weight
        scoped = v.scoped = (session is not None and s.other_sessions_weight < 1 and self.lexical is not None
                             and self.lexical.other_sessions(partitions, session))
        # the current project next: its other sessions' own rankings (the project's items may all lie
        # below the tenant's top too)
        in_project = v.in_project = (scoped and bool(project) and s.project_weight > s.other_sessions_weight
                                     and any(self.lexical.project_size(p, project) for p in dict.fromkeys(partitions)))
        if not qtext.strip() or self.embedder is None or not getattr(self.store, "available", False):
            return v
        v.mode = "hybrid"
        if self.lexical is not None and s.common_term_ratio > 0:
            qtext = self.lexical.prune_common(qtext, partitions, s.common_term_ratio,
                                              session=session if scoped else None)
        v.vector_query = qtext
        texts = [qtext] + ([query.context[-600:]] if v.use_context else [])  # the same bound as vector_text
        fetch = n + 24  # room for the items still in the history
        vtime = v.timings

        def call():
            t = time.perf_counter()
            vecs = self.embedder(texts)
            vec = vecs[0]
            if len(vecs) > 1:
                vec = vec + s.context_weight * vecs[1]
                vec = vec / max(1e-9, float(np.linalg.norm(vec)))
            v.embedding = vec
            t2 = time.perf_counter()
            vtime["embed_ms"] = round((t2 - t) * 1000, 2)
            try:
                got = self.store.vector_query(qtext, tenants, fetch, query_embedding=vec, workspace=workspace)
                if scoped:  # exact within the session (its items may all lie below the tenant's top)
                    self.scope = self.scope or SessionVectors(self.store)
                    got = got + self.scope.rank(self.lexical, partitions, session, vec, fetch)
                    if in_project:
                        got = got + self.scope.rank(self.lexical, partitions, session, vec, fetch + n, project)
                return got
            finally:
                vtime["vector_ms"] = round((time.perf_counter() - t2) * 1000, 2)

        # embedding + the vector query run in the pool while the caller ranks lexically (ONNX Runtime
        # and Chroma release the GIL, so the two overlap)
        if self.pool is not None:
            v.future = self.pool.submit(call)
        else:
            v.result = call()
        return v

    def search(self, query: Query, tenants: list[str], *, workspace: str | None = None,
               exclude: Callable[[object], bool] | None = None, n: int | None = None,
               timeout_s: float | None = None, deadline: float | None = None,
               neighbours: Callable[[object], list] | None = None, session: str | None = None,
               project: str | None = None, vectors: Vectors | None = None) -> Retrieval:
        """Fused candidates (best first), not yet cut to the budget. Raises TimeoutError when the vector
        query runs past the deadline (the caller decides to go without memory). ``session``: the
        current session, ranked first (``memory.other_sessions_weight``); ``project``: the current
        project, whose other sessions rank next (``memory.project_weight``). ``vectors``: this very
        search's :meth:`start`, made earlier (used only when its arguments are these)."""
        t0 = time.perf_counter()
        if deadline is None and timeout_s is not None:
            deadline = t0 + timeout_s
        out = Retrieval()
        if not query.vector_text().strip():
            out.skipped = "empty query"
            return out
        if vectors is None or vectors.key != Vectors.key_of(query, tenants, workspace, n, session, project):
            vectors = self.start(query, tenants, workspace=workspace, n=n, session=session, project=project)
        else:
            out.timings["prefetched"] = 1
        n = n or self.settings.candidates
        out.mode, out.vector_query = vectors.mode, vectors.vector_query
        scopes = _Scopes(vectors, session, project)
        tl = time.perf_counter()
        lex = self._lexical(query, vectors, scopes, exclude, n)
        out.timings["lexical_ms"] = round((time.perf_counter() - tl) * 1000, 2)
        vhits = self._vector_hits(vectors, exclude, n, deadline, t0, out) if out.mode != "lexical" else []
        by_id, rankings = self._rankings(vhits, lex, scopes, n)
        if session is not None and (self.settings.speaker_weight > 0 or self.settings.date_weight > 0):
            rankings += self._focus(query, vectors, by_id, exclude, n, session)
        if self.settings.neighbour_weight > 0 and neighbours is not None:
            rankings += self._neighbours(by_id, rankings, scopes, neighbours, exclude)
        fused = rrf(rankings, self.settings.rrf_k)
        for key, score in fused.items():
            by_id[key].fused = score
        out.hits = sorted((by_id[key] for key in fused), key=lambda h: -h.fused)
        if (vectors.embedding is not None and out.hits and all(h.vector is None for h in out.hits)
                and (deadline is None or time.perf_counter() < deadline)):
            # every candidate stored too recently to be embedded yet (the embedder runs at idle priority): the
            # first few are embedded now (a 600-character text ~65 ms of a slow core), for the relevance floor,
            # one at a time, each waited for only until the deadline: a search that ran past it would go
            # without memory altogether (in the pool: ONNX Runtime releases the GIL)
            te = time.perf_counter()
            for h in out.hits[:UNEMBEDDED_JUDGED]:
                vec = self._embed_by(searchable(h.item.text)[:600], deadline)
                if vec is None:
                    out.timings["unembedded_late"] = 1
                    break
                h.vector = min(1.0, max(0.0, float(np.dot(vectors.embedding, vec))))
            out.timings["unembedded_ms"] = round((time.perf_counter() - te) * 1000, 2)
        out.candidates = len(by_id)
        out.ms = round((time.perf_counter() - t0) * 1000, 2)
        return out

    def _embed_by(self, text: str, deadline: float | None) -> Any:
        """``text``'s vector, or None when it is not ready by ``deadline`` (computed in the pool, when there is one)."""
        if self.pool is None or deadline is None:
            return self.embedder([text])[0]
        fut = self.pool.submit(self.embedder, [text])
        try:
            return fut.result(timeout=max(0.0, deadline - time.perf_counter()))[0]
        except cf.TimeoutError:
            fut.cancel()
            return None

    def _lexical(self, query: Query, v: Vectors, scopes: _Scopes, exclude, n: int) -> list:
        """The BM25 hits: over the tenant, and (scoped) within the session and the project, best first."""
        if self.lexical is None:
            return []
        terms = self._terms(query, v)
        lex = self.lexical.query(terms, v.partitions, n=n, exclude=exclude)
        if v.scoped:
            lex = lex + self.lexical.query(terms, v.partitions, n=n, exclude=exclude, session=scopes.session)
        if v.in_project:  # deep enough that the current session's items in it leave n of the others
            lex = lex + self.lexical.query(terms, v.partitions, n=2 * n, exclude=exclude, project=scopes.project)
        if v.scoped:
            lex = list({lh.item.id: lh for lh in sorted(lex, key=lambda h: -h.score)}.values())
            lex.sort(key=lambda h: -h.score)
        return lex

    def _terms(self, query: Query, v: Vectors) -> dict[str, float]:
        """The BM25 query: the question's terms (and the turns before it, for a short follow-up), and the
        session's words nearest them by embedding (``memory.related_weight``: :mod:`.related`)."""
        if v.terms is not None:
            return v.terms
        terms = query_terms(query.text)
        if v.use_context:
            terms = combine_terms(terms, query_terms(query.context[-1500:], weight=self.settings.context_weight))
        s, session = self.settings, v.session
        if s.related_weight > 0 and self.related is not None and session is not None and self.lexical is not None:
            part = self._partition(v, session)
            near = {} if part is None else self.related.expand(part, session, query.text, per_word=s.related_per_word,
                                                                floor=s.related_floor, common=s.common_term_ratio)
            terms = combine_terms(terms, {t: s.related_weight * sim for t, sim in near.items()})
        v.terms = terms
        return terms

    def _partition(self, v: Vectors, session: str) -> str | None:
        """The lexical partition that holds ``session``'s items."""
        return next((p for p in v.partitions if self.lexical.session_size(p, session)), None)

    def _own_ranked(self, v: Vectors, session: str, ranked: list) -> list:
        """``ranked`` (the session's items by vector) with each of the person's turns scored by the better of
        its own similarity and its best sentence's (:mod:`.asides`): what they told in passing."""
        if self.asides is None or v.embedding is None or self.lexical is None:
            return ranked
        part = self._partition(v, session)
        best = self.asides.best(part, session, v.embedding) if part is not None else {}
        if not best:
            return ranked
        return sorted(((it, max(sim, min(1.0, best.get(it.id, 0.0)))) for it, sim in ranked), key=lambda x: -x[1])

    def _matched(self, query: Query, v: Vectors, session: str, ranked: list) -> list:
        """``ranked`` (the session's items by vector) with its speaker turns first, by their token-level match
        with the question (:mod:`.asides`), and the other items after them as they were."""
        if self.pieces is None or not ranked or (part := self._partition(v, session)) is None:
            return ranked
        score = self.pieces.scores(part, session, query.vector_text())
        if not score:
            return ranked
        return sorted(((it, score.get(it.id, sim)) for it, sim in ranked), key=lambda x: (x[0].id not in score, -x[1]))

    def _focus(self, query: Query, v: Vectors, by_id: dict[str, Hit], exclude, n: int, session: str) -> list:
        """Rankings within the current session's turns of what the question names: the one participant
        ("What does Melanie do to destress?" follows Melanie's turns, which the other participant's
        turns on the same topics push below the conversation's top; ``memory.speaker_weight``) and the
        days ("What did Maria share on 16 June, 2023?", "in December 2023": the turns dated within
        ``DATE_SLACK_DAYS`` of one, ``MemoryItem.when``; ``memory.date_weight``); in a chat with an assistant
        (no participants' names, no tools), a question about the one asking follows their own turns ("Which
        store did I spend the most at?", ``memory.speaker_weight``). None when there is nothing to follow."""
        s = self.settings
        days = spans_in(query.text)
        speakers = any(h.item.speaker for h in by_id.values())
        own = (not speakers and s.speaker_weight > 0 and _FIRST_PERSON.search(query.text) is not None
               and not any(h.item.role == "tool" for h in by_id.values()))  # (an agent's session: its tools)
        if not days and not speakers and not own:
            return []  # no day named, no participants: nothing to read
        ranked: list = []
        if v.embedding is not None:
            self.scope = self.scope or SessionVectors(self.store)
            ranked = self.scope.rank(self.lexical, v.partitions, session, v.embedding, SCOPE_MAX)
        words = set(tokenize(query.text))
        names = {x: set(tokenize(x)) for x in {h.item.speaker for h in by_id.values()} | {it.speaker for it, _ in ranked} if x}
        named = [x for x, t in names.items() if t and t <= words]  # (a header "Includes:" has no name's words)
        focus: list[tuple[Callable[[MemoryItem], bool], float, list]] = []
        one = len(named) == 1 and s.speaker_weight > 0
        matched = self._matched(query, v, session, ranked) if one or (days and s.date_weight > 0) else ranked
        if one:
            who = named[0]
            focus.append((lambda it: it.speaker == who, s.speaker_weight, matched))
        if own:
            focus.append((lambda it: it.role == "user", s.speaker_weight, self._own_ranked(v, session, ranked)))
        if days and s.date_weight > 0:
            focus.append((lambda it: near(it.when, days, DATE_SLACK_DAYS), s.date_weight, matched))
        lex = (self.lexical.query(self._terms(query, v), v.partitions, n=4 * n, exclude=exclude, session=session)
               if focus and self.lexical is not None else [])
        rankings = []
        for keep, w, by_vector in focus:
            vids = [h.item.id for h in self._kept(by_id, ((it, sim) for it, sim in by_vector if sim >= s.min_similarity),
                                                   keep, exclude, n)]
            lids = [h.item.id for h in self._kept(by_id, ((lh.item, lh.score) for lh in lex), keep, None, n, lexical=True)]
            rankings += [(vids, w * s.vector_weight), (lids, w * s.lexical_weight)]
        return rankings

    @staticmethod
    def _kept(by_id: dict[str, Hit], scored, keep, exclude, n: int, lexical: bool = False) -> list[Hit]:
        """The first ``n`` of ``scored`` (item, score) that ``keep`` keeps and ``exclude`` does not, as hits
        in ``by_id`` (their vector or lexical score set when they had none)."""
        out: list[Hit] = []
        for item, score in scored:
            if len(out) >= n:
                break
            if keep(item) and not (exclude is not None and exclude(item)):
                h = by_id.setdefault(item.id, Hit(item))
                if lexical:
                    h.lexical = score if h.lexical is None else h.lexical
                else:
                    h.vector = score if h.vector is None else h.vector
                out.append(h)
        return out

    def _vector_hits(self, v: Vectors, exclude, n: int, deadline: float | None, t0: float,
                     out: Retrieval) -> list[tuple[object, float]]:
        """The vector half's (item, similarity), best first, without the items still in the history
        (counted in ``out.in_history``); waits for it until ``deadline``."""
        vres = v.result
        if v.future is not None:
            tv = time.perf_counter()
            remaining = None if deadline is None else max(0.0, deadline - time.perf_counter())
            try:
                vres = v.future.result(timeout=remaining)
            except cf.TimeoutError:
                v.future.cancel()
                # how long this search waited, not the caller's budget (which started earlier)
                raise TimeoutError(f"the vector query had not returned {(time.perf_counter() - t0) * 1000:.0f} ms "
                                   f"into the search, at its deadline") from None
            out.timings["vector_wait_ms"] = round((time.perf_counter() - tv) * 1000, 2)
        out.timings.update(v.timings)
        seen: set[str] = set()
        vhits: list[tuple[object, float]] = []
        for item, sim in sorted(vres or (), key=lambda x: -x[1]):  # scoped: two result lists, merged
            if item.id in seen:
                continue
            seen.add(item.id)
            if exclude is not None and exclude(item):
                out.in_history += 1
                continue
            vhits.append((item, sim))
            if not v.scoped and len(vhits) >= n:
                break
        return vhits

    def _rankings(self, vhits: list, lex: list, scopes: _Scopes, n: int) -> tuple[dict[str, Hit], list]:
        """The candidates by id and the weighted rankings to fuse: one vector and one BM25 ranking per
        scope, each at most ``n`` long (vector hits under ``memory.min_similarity`` do not count)."""
        s = self.settings
        by_id: dict[str, Hit] = {}
        vranks: dict[int, list[str]] = {g: [] for g in SCOPES}
        lranks: dict[int, list[str]] = {g: [] for g in SCOPES}
        vcount = dict.fromkeys(SCOPES, 0)
        for item, sim in vhits:
            g = scopes.of(item)
            if vcount[g] >= n:
                continue
            vcount[g] += 1
            h = by_id.setdefault(item.id, Hit(item))
            h.vector, h.vector_rank = sim, vcount[g]
            if sim >= s.min_similarity:
                vranks[g].append(item.id)
        for lh in lex:
            g = scopes.of(lh.item)
            if len(lranks[g]) >= n:
                continue
            h = by_id.setdefault(lh.item.id, Hit(lh.item))
            h.lexical, h.lexical_rank = lh.score, len(lranks[g]) + 1
            lranks[g].append(lh.item.id)
        rankings = []
        for g, w in scopes.weights(s).items():
            rankings += [(vranks[g], w * s.vector_weight), (lranks[g], w * s.lexical_weight)]
        return by_id, rankings

    def _neighbours(self, by_id: dict[str, Hit], rankings: list, scopes: _Scopes, neighbours, exclude) -> list:
        """A third ranking: the messages next to the best hits, in their order. A reply that only makes
        sense after the message before it ("Yes, tomorrow night!") is found through its neighbour.
        Scoped, one per scope, weighted as the scope's other rankings: an older session's hit does not
        lend its neighbours the current session's weight. Adds the new candidates to ``by_id``."""
        s = self.settings
        base = rrf(rankings, s.rrf_k)
        nids: dict[int, list[str]] = {g: [] for g in SCOPES}
        for key in sorted(base, key=lambda k: -base[k])[: s.neighbour_depth]:
            for nb in neighbours(by_id[key].item):
                if nb.id not in by_id:
                    if exclude is not None and exclude(nb):
                        continue
                    by_id[nb.id] = Hit(nb, neighbour_of=key)
                nids[scopes.of(nb)].append(nb.id)
        return [(nids[g], w * s.neighbour_weight) for g, w in scopes.weights(s).items()]


SCOPES = (0, 1, 2)  # the current session, the current project's other sessions, the rest of the tenant


@dataclass(frozen=True)
class _Scopes:
    """Which of :data:`SCOPES` an item ranks in, for a search's :class:`Vectors`."""

    v: Vectors
    session: str | None
    project: str | None

    def of(self, item) -> int:
        if not self.v.scoped or str(item.session) == self.session:
            return 0
        return 1 if self.v.in_project and getattr(item, "project", None) == self.project else 2

    def weights(self, s) -> dict[int, float]:
        """Each scope's weight in the fusion (only the current session's when the search is not scoped)."""
        w = {0: 1.0}
        if self.v.in_project:
            w[1] = s.project_weight
        if self.v.scoped:
            w[2] = s.other_sessions_weight
        return w


def agreed(ret: Retrieval, query: str) -> tuple[Hit, str] | None:
    """The first hit both rankings agree on, and the word of the question it holds: in the top
    ``AGREED_DEPTH`` of the vector ranking (similarity at least ``AGREED_SIMILARITY``) and of the BM25
    ranking, holding a content word of the question that most stored items do not (the vector query is
    the question less those words). An open-domain question's item often has a modest similarity yet
    is ranked high by both: such a hit passes the relevance floor (plugins/memory.py)."""
    words = set(content_words(ret.vector_query or query))
    if not words:
        return None
    for h in ret.hits:
        if (h.vector_rank is not None and h.vector_rank <= AGREED_DEPTH and h.vector is not None
                and h.vector >= AGREED_SIMILARITY and h.lexical_rank is not None and h.lexical_rank <= AGREED_DEPTH):
            held = [w for w in tokenize(h.item.text) if w in words]
            if held:
                return h, held[0]
    return None


def select(ret: Retrieval, *, budget: int, top_k: int, cost: Callable[[object], int],
           min_score: float = 0.0, active_tags: set[str] | None = None) -> list[Hit]:
    """Cut fused candidates to ``top_k`` items within ``budget`` tokens (``cost(item)``: its tokens as
    rendered in the block; greedy by fused score: an item that does not fit is passed over for a smaller
    one). Items whose tags are all active topics of the
    history (at least two tags) are skipped: the history is already on them."""
    chosen: list[Hit] = []
    used = 0
    active = active_tags or set()
    for h in ret.hits:
        if len(chosen) >= top_k or budget - used < 8 or h.fused < min_score:
            break
        tags = getattr(h.item, "tags", None) or []
        if active and len(tags) >= 2 and all(tag_key(t) in active for t in tags):
            ret.active += 1
            continue
        c = cost(h.item)
        if used + c > budget:
            continue
        h.tokens = c
        chosen.append(h)
        used += c
    ret.tokens = used
    return chosen
