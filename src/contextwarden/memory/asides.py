"""A person's own sentences by embedding: what they told in passing, in a turn about something else.

In a chat with an assistant the person's facts are often asides in a turn that asks for something else
("I'm looking to create a presentation ... By the way, I've been in marketing for a while now, started as a
Marketing Coordinator and worked my way up to Senior Marketing Specialist after 2 years and 4 months."): the
turn's embedding is its request's, far from a question about the aside ("How long have I been working in my
current role?"). Each of the person's turns (role ``user``, no speaker header) of several sentences has its
sentences embedded once, off the request path (:meth:`Asides.learn`, from the ingestor's ``on_added``); a
question about the one asking ranks their turns by the better of the turn's similarity and its best
sentence's (``retrieve.Retriever._focus``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..util.lru import LRU

SESSIONS_KEPT = 16  # sessions whose sentences are kept (an LRU: the least recently grown go first)
ROWS_MAX = 5_000  # sentences of one session embedded, at most (1.5 KB each; LongMemEval: ~650 a history)
MIN_WORDS = 3  # shorter sentences ("Thanks!", "Sure.") say nothing of their own
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    """The sentences of ``text`` of at least :data:`MIN_WORDS` words (none when it has fewer than two:
    its one sentence is the turn, whose vector the store has)."""
    out = [s.strip() for s in _SENTENCE.split(text) if len(s.split()) >= MIN_WORDS]
    return out if len(out) > 1 else []


def _own(item) -> bool:
    return item.kind == "message" and item.role == "user" and not item.speaker


@dataclass(frozen=True)
class _Rows:
    """A session's sentences (immutable: a grown session is a new one)."""

    seen: int = 0  # the session's items read
    owners: tuple[str, ...] = ()  # the item id of each row of ``matrix``
    matrix: np.ndarray | None = None


class Asides:
    """Per (lexical partition, session): the sentences of the person's turns and their vectors."""

    def __init__(self, embedder) -> None:
        self.embedder = embedder
        self._rows = LRU(SESSIONS_KEPT)  # (partition, session) -> _Rows

    def learn(self, lexical, items) -> None:
        """Embed the new sentences of the sessions ``items`` were added to (the storer's thread)."""
        for part, session in dict.fromkeys((lexical.partition_of(it), str(it.session)) for it in items if _own(it)):
            self._grow(lexical, part, session)

    def _grow(self, lexical, partition: str, session: str) -> None:
        key = (partition, session)
        r = self._rows.peek(key) or _Rows()
        items = lexical.session_items(partition, session)
        owners: list[str] = []
        texts: list[str] = []
        for it in items[r.seen:]:
            for s in sentences(it.text) if _own(it) else ():
                owners.append(it.id)
                texts.append(s)
        texts, owners = texts[: ROWS_MAX - len(r.owners)], owners[: ROWS_MAX - len(r.owners)]
        matrix = r.matrix
        if texts:
            vecs = np.asarray(self.embedder(texts), dtype=np.float32)
            matrix = vecs if matrix is None else np.vstack([matrix, vecs])
        self._rows.put(key, _Rows(len(items), r.owners + tuple(owners), matrix))

    def best(self, partition: str, session: str, query_vec: np.ndarray) -> dict[str, float]:
        """Per item id of the session's person's turns, its best sentence's cosine similarity to ``query_vec``."""
        r = self._rows.peek((partition, str(session)))
        if r is None or r.matrix is None:
            return {}
        q = np.asarray(query_vec, dtype=np.float32)
        sims = np.einsum("ij,j->i", r.matrix, q / max(1e-9, float(np.linalg.norm(q))))
        out: dict[str, float] = {}
        for owner, sim in zip(r.owners, sims.tolist()):
            if sim > out.get(owner, -1.0):
                out[owner] = sim
        return out
