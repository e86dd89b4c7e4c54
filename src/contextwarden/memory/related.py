"""Related words: the session's own words nearest a question's by embedding, as more BM25 terms.

A question often names a category and the turn that answers it a member ("What video games does Nate
play?" -> "the final of a big Valorant tournament"; "What instruments ..." -> "the violin"): the two
share no word, and the turn's embedding is far from the question's. Each word of a session's messages is
embedded on its own, once, off the request path (:meth:`RelatedWords.learn`, from the ingestor's
``on_added``: a word's vector never changes); a question's words are matched against them and the nearest
(cosine at least ``floor``) join its BM25 query, weighted by their similarity (``memory.related_weight``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..util.lru import LRU
from .asides import new_turns
from .envelopes import searchable
from .words import plain_words

SESSIONS_KEPT = 16  # sessions whose vocabulary is kept (an LRU: the least recently grown go first)
VOCAB_MAX = 20_000  # words of one session embedded, at most


@dataclass(frozen=True)
class _Vocab:
    """A session's words (immutable: a grown vocabulary is a new one)."""

    seen: int = 0  # the session's items read
    terms: tuple[str, ...] = ()  # a term per row of ``matrix``
    df: Counter = field(default_factory=Counter)  # messages holding each term
    matrix: np.ndarray | None = None


def _message(item) -> bool:
    return item.kind == "message"


class RelatedWords:
    """Per (lexical partition, session): its messages' words and their vectors, grown as it grows."""

    def __init__(self, embedder) -> None:
        self.embedder = embedder
        self._vocab = LRU(SESSIONS_KEPT)  # (partition, session) -> _Vocab

    def learn(self, lexical, items) -> None:
        """Embed the new words of the sessions ``items`` were added to (the storer's thread)."""
        for key, v, seen, messages in new_turns(self._vocab, lexical, items, _message, _Vocab):
            known = set(v.terms)
            df = Counter(v.df)
            new: dict[str, str] = {}
            for it in messages:
                pairs = plain_words(searchable(it.text))
                df.update({t for t, _ in pairs})
                for t, w in pairs:
                    if t not in known and len(known) + len(new) < VOCAB_MAX:
                        new.setdefault(t, w)
            matrix = v.matrix
            if new:
                vecs = np.asarray(self.embedder(list(new.values())), dtype=np.float32)
                matrix = vecs if matrix is None else np.vstack([matrix, vecs])
            self._vocab.put(key, _Vocab(seen, v.terms + tuple(new), df, matrix))

    def expand(self, partition: str, session: str, question: str, *, per_word: int = 3,
               floor: float = 0.5, common: float = 0.2) -> dict[str, float]:
        """Terms of the session's words nearest each of the question's (up to ``per_word`` a word, at
        least ``floor``; neither the question's own words nor words in more than ``common`` of the
        session's messages, such as the participants' names), each weighted by its best similarity.
        Reads only what :meth:`learn` embedded: the request path embeds the question's few words."""
        vocab = self._vocab.peek((partition, str(session)))
        if vocab is None or vocab.matrix is None:
            return {}
        n = max(1, vocab.seen)
        pairs = plain_words(question)
        own = {t for t, _ in pairs}
        asked = list(dict.fromkeys(w for t, w in pairs if vocab.df.get(t, 0) / n <= common))
        if not asked:
            return {}
        sims = np.asarray(self.embedder(asked), dtype=np.float32) @ vocab.matrix.T  # (question words, vocabulary)
        out: dict[str, float] = {}
        for row in sims:
            taken = 0
            for j in np.argsort(-row)[: per_word + 16]:
                t, sim = vocab.terms[j], float(row[j])
                if sim < floor or taken >= per_word:
                    break
                if t in own or vocab.df.get(t, 0) / n > common:
                    continue
                out[t] = max(out.get(t, 0.0), sim)
                taken += 1
        return out
