"""What a turn says in part, by embedding: the person's sentences, the participants' word pieces.

In a chat with an assistant the person's facts are often asides in a turn that asks for something else
("I'm looking to create a presentation ... By the way, I've been in marketing for a while now, started as a
Marketing Coordinator and worked my way up to Senior Marketing Specialist after 2 years and 4 months."): the
turn's embedding is its request's, far from a question about the aside ("How long have I been working in my
current role?"). :class:`Asides` embeds each sentence of the person's turns (role ``user``, no speaker
header, several sentences) once; a question about the one asking ranks their turns by the better of the
turn's similarity and its best sentence's.

In a conversation between people (turns with a speaker header, :mod:`.turns`) a question names a
participant or a day, and the evidence is one of that participant's hundreds of turns on the same topics.
:class:`Pieces` keeps each speaker turn's word pieces as the model read them in context (its last hidden
states, :meth:`.embedder.Embedder.states`, int8) and scores a turn by token-level matching (late
interaction, "MaxSim"): for each of the question's pieces its best cosine among the turn's, averaged with
weights for how rare the piece is among the session's turns. On LoCoMo it finds the evidence that the pooled
vector ranks lower (recall at 40 of a conversation's turns: 0.77 against 0.64; docs/memory-retrieval.md).

Both learn off the request path (the storer's thread, the ingestor's ``on_added``; in the memory process the
model runs in the idle embedding worker, :mod:`.embedworker`) and are read by
``retrieve.Retriever._focus``. A sentence is one row of its turn's group, a piece likewise: a turn's score is
the weighted mean over the question's rows of the best row of its group (one query row for sentences: the
best sentence).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..util.lru import LRU

SESSIONS_KEPT = 16  # sessions whose sentences are kept (an LRU: the least recently grown go first)
ROWS_MAX = 5_000  # sentences of one session embedded, at most (1.5 KB each; LongMemEval: ~650 a history)
MIN_WORDS = 3  # shorter sentences ("Thanks!", "Sure.") say nothing of their own
PIECE_SESSIONS = 4  # sessions whose pieces are kept (384 bytes a piece: a LoCoMo conversation ~7 MB)
PIECES_MAX = 40_000  # a session's pieces kept, at most (its latest turns'; a LoCoMo conversation: 15-26K)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    """The sentences of ``text`` of at least :data:`MIN_WORDS` words (none when it has fewer than two:
    its one sentence is the turn, whose vector the store has)."""
    out = [s.strip() for s in _SENTENCE.split(text) if len(s.split()) >= MIN_WORDS]
    return out if len(out) > 1 else []


def _own(item) -> bool:
    return item.kind == "message" and item.role == "user" and not item.speaker


def _spoken(item) -> bool:
    return item.kind in ("message", "chunk") and bool(item.speaker)  # (a long turn is stored in chunks)


@dataclass(frozen=True)
class _Rows:
    """A session's rows in groups, one group per turn (immutable: a grown session is a new one)."""

    seen: int = 0  # the session's items read
    owners: tuple[str, ...] = ()  # the item id of each group
    starts: tuple[int, ...] = ()  # the first row of each group in ``matrix``
    matrix: np.ndarray | None = None  # rows L2-normalised (float32, or int8 scaled by 127)
    df: Mapping[int, int] = field(default_factory=dict)  # pieces: how many groups hold each token id

    def grown(self, seen: int, groups: list[tuple[str, np.ndarray, list[int]]], limit: int) -> _Rows:
        """These rows and ``groups`` (owner, rows, token ids) at the end; the oldest groups go past ``limit`` rows."""
        if not groups:
            return replace(self, seen=seen)
        owners, starts, df = list(self.owners), list(self.starts), dict(self.df)
        total = 0 if self.matrix is None else len(self.matrix)
        for owner, rows, ids in groups:
            owners.append(owner)
            starts.append(total)
            total += len(rows)
            for t in set(ids):
                df[t] = df.get(t, 0) + 1
        new = np.concatenate([rows for _, rows, _ in groups])
        matrix = new if self.matrix is None else np.concatenate([self.matrix, new])
        cut = next((k for k, st in enumerate(starts) if total - st <= limit), len(starts))
        if cut:  # (a dropped group's pieces stay counted: df only weighs the question's pieces)
            first = starts[cut] if cut < len(starts) else total
            matrix, owners, starts = matrix[first:], owners[cut:], [st - first for st in starts[cut:]]
        return _Rows(seen, tuple(owners), tuple(starts), matrix, df)

    def scores(self, query: np.ndarray, weights: np.ndarray) -> dict[str, float]:
        """Per group, the ``weights``-weighted mean over ``query``'s rows of their best cosine in the group."""
        if self.matrix is None or not self.owners:
            return {}
        scale = 127.0 * float(weights.sum()) if self.matrix.dtype == np.int8 else float(weights.sum())
        sims = self.matrix.astype(np.float32, copy=False) @ np.asarray(query, dtype=np.float32).T  # (rows, query rows)
        best = np.maximum.reduceat(sims, np.asarray(self.starts), axis=0)  # (groups, query rows)
        return dict(zip(self.owners, (best @ (weights / max(1e-9, scale))).tolist()))


def new_turns(learnt: LRU, lexical, items, wanted, empty: Callable[[], Any]) -> Iterator[tuple[tuple[str, str], Any, int, list]]:
    """For each session ``items`` were added to that holds a ``wanted`` one: its key, what ``learnt`` holds
    of it (``empty()`` when nothing; a record whose ``seen`` counts the session's items read), its items
    read now, and its ``wanted`` items not read before (asides and pieces here, related words)."""
    for key in dict.fromkeys((lexical.partition_of(it), str(it.session)) for it in items if wanted(it)):
        r = learnt.peek(key) or empty()
        news = lexical.session_items(*key)
        yield key, r, len(news), [it for it in news[r.seen:] if wanted(it)]


class Asides:
    """Per (lexical partition, session): the sentences of the person's turns and their vectors."""

    def __init__(self, embedder) -> None:
        self.embedder = embedder
        self._rows = LRU(SESSIONS_KEPT)  # (partition, session) -> _Rows

    def learn(self, lexical, items) -> None:
        """Embed the new sentences of the sessions ``items`` were added to (the storer's thread)."""
        for key, r, seen, turns in new_turns(self._rows, lexical, items, _own, _Rows):
            todo = [(it.id, s) for it in turns for s in sentences(it.text)]
            todo = todo[: max(0, ROWS_MAX - (0 if r.matrix is None else len(r.matrix)))]
            vecs = np.asarray(self.embedder([s for _, s in todo]) if todo else np.zeros((0, 0)), dtype=np.float32)
            groups: dict[str, list] = {}
            for (owner, _), v in zip(todo, vecs):
                groups.setdefault(owner, []).append(v)
            self._rows.put(key, r.grown(seen, [(o, np.stack(vs), []) for o, vs in groups.items()], ROWS_MAX))

    def best(self, partition: str, session: str, query_vec: np.ndarray) -> dict[str, float]:
        """Per item id of the session's person's turns, its best sentence's cosine similarity to ``query_vec``."""
        r = self._rows.peek((partition, str(session)))
        if r is None:
            return {}
        q = np.asarray(query_vec, dtype=np.float32)[None, :]
        return r.scores(q / max(1e-9, float(np.linalg.norm(q))), np.ones(1, dtype=np.float32))


class Pieces:
    """Per (lexical partition, session): the word pieces of the participants' turns, in context."""

    def __init__(self, embedder) -> None:
        self.embedder = embedder  # ``states``: :class:`.embedder.CachedEmbedder` or :class:`.embedder.Embedder`
        self._rows = LRU(PIECE_SESSIONS)  # (partition, session) -> _Rows

    def learn(self, lexical, items) -> None:
        """Read the new speaker turns of the sessions ``items`` were added to (the storer's thread)."""
        for key, r, seen, turns in new_turns(self._rows, lexical, items, _spoken, _Rows):
            states = self.embedder.states([it.text for it in turns]) if turns else []
            groups = [(it.id, np.round(m * 127).astype(np.int8), ids) for it, (m, ids) in zip(turns, states) if len(ids)]
            self._rows.put(key, r.grown(seen, groups, PIECES_MAX))

    def scores(self, partition: str, session: str, text: str) -> dict[str, float]:
        """Per item id of the session's speaker turns, its token-level match with ``text`` (empty when the
        session has none)."""
        r = self._rows.peek((partition, str(session)))
        if r is None or not r.owners or not text.strip():
            return {}
        q, ids = self.embedder.states([text])[0]
        if not ids:
            return {}
        n = len(r.owners)
        w = np.array([math.log(1 + (n - r.df.get(t, 0) + 0.5) / (r.df.get(t, 0) + 0.5)) for t in ids], np.float32)
        return r.scores(q, w)
