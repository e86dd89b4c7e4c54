"""Topic tags for turns: an offline keyword tagger, and an optional embedding tagger.

Tags are short labels of what a turn is about (``adoption agency``, ``auth.py``, ``load_embedder``).
They appear in ``tags`` events, are stored with memory items, and tell the memory stage which topics
the history already covers (the *active* tags of recent turns), so it does not inject more of them.

The keyword tagger needs no model: it scores code identifiers and file paths, capitalised names, and
runs of content words (stopwords break runs), then merges near-duplicates with rapidfuzz
(``tagging.merge_similarity``) and keeps ``tagging.max_tags``.
"""

from __future__ import annotations

import contextlib
import re
import threading
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from rapidfuzz import fuzz

from ..util.lru import LRU
from ..util.redact import redact_text
from .words import STOPWORDS, stem

# file paths and names with an extension (src/app/auth.py, README.md, ./run.sh)
_PATH = re.compile(r"(?<![\w/.-])(?:\.{0,2}/)?(?:[\w.-]+/)*[\w-]+\.[A-Za-z][A-Za-z0-9]{0,6}(?![\w/])")
# snake_case, camelCase / PascalCase with an inner capital, dotted.names, kebab-case-words
_IDENT = re.compile(r"\b(?:[A-Za-z_][A-Za-z0-9]*_[A-Za-z0-9_]+|[a-z]+[A-Z][A-Za-z0-9]*|[A-Z][a-z0-9]+[A-Z][A-Za-z0-9]*"
                    r"|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+\(?)")
_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*[A-Za-z]|[A-Za-z]")
# stop a run of content words at punctuation
_BREAK = re.compile(r"[,.!?;:()\[\]{}\"“”\n]")
# the budget of one text: characters read (the work after that is linear in them, and the pairwise
# merge is bounded by KeywordTagger.fuzzy_limit)
MAX_CHARS = 20_000
_EXT_WORDS = frozenset("com org net io www http https".split())


@dataclass
class _Cand:
    tag: str
    score: float
    key: str  # what near-duplicates are compared on


def _norm_word(w: str) -> str:
    w = w.replace("’", "'").lower().strip("'-")
    return w[:-2] if w.endswith("'s") else w


_MARK = re.compile(r"\[REDACTED:[a-z_]+\]")


def redacted_for_tags(text: str, redacted: bool = False) -> str:
    """``text`` cut to what the tagger reads, its secrets removed (unless ``redacted`` already) and the
    redaction marks too (a mark's kind is no topic). Cut with a margin first so a secret straddling the
    cut is still recognised."""
    text = text[:MAX_CHARS] if redacted else redact_text(text[: MAX_CHARS + 4096])[:MAX_CHARS]
    return _MARK.sub(" , ", text) if "[REDACTED:" in text else text


def _blanked(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with each of the (sorted, maybe overlapping) ``spans`` replaced by a run break."""
    out, pos = [], 0
    for a, b in spans:
        if b > pos:
            out += [text[pos:max(pos, a)], " , "]
            pos = b
    return "".join(out) + text[pos:]


class KeywordTagger:
    """Offline keyword tags of a text. Thread-safe and cheap (regexes, a small rapidfuzz merge)."""

    def __init__(self, max_tags: int = 6, merge_similarity: float = 88) -> None:
        self.max_tags = max_tags
        self.merge_similarity = merge_similarity
        # candidates merged by rapidfuzz at most (the pairwise merge is quadratic in this, not in the text)
        self.fuzzy_limit = max(48, 8 * max_tags)

    def candidates(self, text: str) -> list[_Cand]:
        scores: dict[str, float] = {}
        first_seen: dict[str, int] = {}

        def add(tag: str, weight: float) -> None:
            first_seen.setdefault(tag, len(first_seen))
            scores[tag] = scores.get(tag, 0.0) + weight

        text = text[:MAX_CHARS]
        found = list(_PATH.finditer(text))
        paths = [m.span() for m in found]
        starts = [a for a, _ in paths]
        named: list[str | None] = []  # each path's tag (None: not one)
        for m in found:
            p = m.group(0).strip("./") if m.group(0).startswith("./") else m.group(0)
            last = p.rsplit("/", 1)[-1]
            ext = last.rsplit(".", 1)[-1].lower()
            skip = (ext in _EXT_WORDS or last.replace(".", "").isdigit() or len(p) < 4
                    or ("/" not in p and last.split(".")[0].lower() in STOPWORDS))  # ("e.g", "i.e")
            named.append(None if skip else p)
            if not skip:
                add(p, 3.0)
        idents = []
        for m in _IDENT.finditer(text):
            idents.append(m.span())
            ident = m.group(0).rstrip("(")
            if "." in ident and _PATH.fullmatch(ident):
                continue  # already a path
            if len(ident) < 4 or ident.lower() in STOPWORDS:
                continue
            i = bisect_right(starts, m.start()) - 1
            if i >= 0 and paths[i][1] >= m.end():  # a part of a path ("test_auth" of tests/test_auth.py):
                if (path := named[i]) is not None:  # the path is the tag, and a code-like name weighs as before
                    add(path, 2.5)
                continue
            add(ident, 2.5)
        # runs of content words: single words, and adjacent pairs ("support group"); paths and
        # identifiers are already tags, so no part of them is counted again as a word
        text = _blanked(text, sorted(paths + idents))
        for segment in _BREAK.split(text):
            words = _WORD.findall(segment)
            run: list[tuple[str, bool]] = []
            for i, w in enumerate(words):
                lw = _norm_word(w)
                if lw in STOPWORDS or len(lw) < 3 or not lw.isascii():
                    self._flush(run, add)
                    run = []
                    continue
                proper = w[0].isupper() and i > 0  # capitalised inside a sentence: a name
                run.append((lw, proper))
            self._flush(run, add)
        return [_Cand(t, s + 0.001 * (len(first_seen) - first_seen[t]), t.lower()) for t, s in scores.items()]

    @staticmethod
    def _flush(run: list[tuple[str, bool]], add) -> None:
        for j, (w, proper) in enumerate(run):
            add(w, 1.6 if proper else 1.0)
            if j + 1 < len(run):
                nxt, p2 = run[j + 1]
                add(f"{w} {nxt}", 1.4 if (proper and p2) else 1.1)

    def merge(self, cands: Iterable[_Cand]) -> list[_Cand]:
        """Merge near-duplicates into the best-scored spelling: stems, then rapidfuzz ratio."""
        by_stem: dict[str, _Cand] = {}
        for c in cands:
            k = " ".join(stem(w) for w in c.key.split(" "))
            had = by_stem.get(k)
            if had is None:
                by_stem[k] = _Cand(c.tag, c.score, k)
            else:
                by_stem[k] = _Cand((c if c.score > had.score else had).tag, had.score + c.score, k)
        # Only the best-scored candidates are compared pairwise: comparing every candidate with every kept
        # one is quadratic (random-word tool output has thousands of distinct words: 3.7 s for 10 KB),
        # and a candidate far down the list only ever adds a little to a kept one's score.
        ordered = sorted(by_stem.values(), key=lambda c: -c.score)[: self.fuzzy_limit]
        kept: list[_Cand] = []
        for c in ordered:
            for i, other in enumerate(kept):
                if fuzz.ratio(c.key, other.key) >= self.merge_similarity:
                    kept[i] = _Cand(other.tag, other.score + c.score, other.key)
                    break
            else:
                kept.append(c)
        return sorted(kept, key=lambda c: -c.score)

    def tag(self, text: str, max_tags: int | None = None, redacted: bool = False) -> list[str]:
        """The best ``max_tags`` tags of ``text`` (most relevant first), taken from the text with its
        secrets redacted (``redacted``: it was): a tag goes to events, Chroma metadata and the lexical
        index, so a token (``ghp_…``, a URL's password) must never become one."""
        n = self.max_tags if max_tags is None else max_tags
        if not text or n <= 0:
            return []
        merged = self.merge(self.candidates(redacted_for_tags(text, redacted)))
        # a pair of common words seen once is mostly noise ("group yesterday"); names pass
        merged = [c for c in merged if " " not in c.tag or c.score >= 1.4]
        phrases = [c for c in merged if " " in c.tag][:n]
        in_phrases = {w for c in phrases for w in c.key.split(" ")}
        # (not "group" when "support group" is a tag)
        return [c.tag for c in merged if " " in c.tag or c.key not in in_phrases][:n]


class EmbeddingTagger:
    """Tags a text with the nearest of the tags seen so far (by embedding cosine).

    Catches topics a turn discusses without naming them ("the login flow" near a known ``auth.py``
    tag). Known tags come from the keyword tagger; each is embedded once.
    """

    def __init__(self, embedder, threshold: float = 0.45, max_known: int = 5000) -> None:
        self.embedder = embedder
        self.threshold = threshold
        self._known = LRU(max_known)  # tag -> its vector (the first learnt go first: a tag is learnt once)
        self._lock = threading.Lock()
        self._matrix: np.ndarray | None = None
        self._names: list[str] = []

    def learn(self, tags: Iterable[str]) -> None:
        new = [t for t in tags if self._known.peek(t) is None]
        if not new:
            return
        vecs = self.embedder(new)
        with self._lock:
            for t, v in zip(new, vecs):
                self._known.put(t, v)
            self._matrix = None

    def tag(self, text: str, n: int = 2, exclude: Iterable[str] = ()) -> list[str]:
        with self._lock:
            if not self._known:
                return []
            if self._matrix is None:
                known = self._known.items()
                self._names = [str(t) for t, _ in known]
                self._matrix = np.stack([v for _, v in known])
            names, matrix = self._names, self._matrix
        q = self.embedder([text[:2000]])[0]
        sims = matrix @ q
        skip = set(exclude)
        out = []
        for i in np.argsort(-sims)[: n + len(skip)]:
            if sims[i] >= self.threshold and names[i] not in skip:
                out.append(names[i])
            if len(out) >= n:
                break
        return out


class Tagger:
    """The tagger the stages use: keyword tags, plus embedding tags when ``tagging.embedding_tagger``."""

    def __init__(self, settings, embedder=None) -> None:
        self.settings = settings
        self.keywords = KeywordTagger(settings.max_tags, settings.merge_similarity)
        self.embedding = EmbeddingTagger(embedder) if settings.embedding_tagger and embedder is not None else None
        self._cache = LRU(8192)

    def tag(self, text: str, redacted: bool = False) -> list[str]:
        """Tags of one text (cached by text: the history's turns are tagged again on every request;
        ``redacted``: its secrets were removed already)."""
        return self._cache.get(text if len(text) < 256 else f"{len(text)}:{hash(text)}", self._tag, text, redacted)

    def _tag(self, text: str, redacted: bool) -> list[str]:
        tags = self.keywords.tag(text, redacted=redacted)
        if self.embedding is not None and text.strip():
            with contextlib.suppress(Exception):  # the embedding tagger is an extra; keyword tags stand alone
                # the nearest known topic takes the place of the weakest keyword
                extra = self.embedding.tag(text, n=1, exclude=tags)
                self.embedding.learn(tags)
                tags = tags[: max(0, self.settings.max_tags - len(extra))] + extra
        return tags


def tag_key(tag: str) -> str:
    """The comparison form of a tag: lower-case, stemmed words."""
    return " ".join(stem(w) for w in tag.lower().split(" "))
