"""Which of a conversation's texts could hold a string as a substring, answered by set lookups.

Auto-recall asks on every request which lost texts hold one of the latest answer's terms
(:meth:`contextwarden.memory.autorecall.TermIndex.unread`). A substring test of every term in every lost
text costs what the history costs (0.9 ms a request at 150K tokens); reading every lost text's terms on
sight costs milliseconds a text (7 ms a request under load). This index is cheap enough to build on
sight (one ``bytes.translate`` and ``split`` of the text's UTF-8) and never rules out a text that holds the string:

- a string's *runs* are the longest stretches of its UTF-8 bytes without a separator (an ASCII
  character other than a letter, a digit or ``_``);
- if ``s`` is a substring of ``text``, each run of ``s`` lies inside one run of ``text`` (the separators
  around it in ``s`` are there in ``text`` too): it is a substring of a run of ``text``;
- so the index keeps, for each run of ``MIN_RUN`` bytes or more, the texts that have it (a bit
  mask), and for each trigram the runs holding it: the runs that hold a run ``r`` of ``s`` are among
  those of ``r``'s rarest trigram, and are tested exactly (``r in run``).

The answer is a superset of the texts holding ``s`` (a string without a run of ``MIN_RUN`` bytes
rules nothing out): the caller still tests those exactly. Bounded: past ``max_texts`` texts or
``max_runs`` runs it takes no more texts, and the caller tests those it does not know.

Out of the garbage collector's sight: every key and value here is an atom (a trigram's runs are their
numbers packed in one ``bytearray``, extended in place), so its dicts are never tracked: lists of runs
made a full collection, which holds the interpreter lock, walk 233K of them under load.
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Iterable

# Read as UTF-8 (a substring's bytes are a substring of the text's bytes), where translating and
# splitting cost microseconds (a str with one character outside ASCII is translated character by
# character): ASCII bytes other than letters, digits and "_" become spaces and split() cuts there.
_SEPARATORS = bytes(b if chr(b).isalnum() or b == ord("_") or b >= 128 else 32 for b in range(256))
MIN_RUN = 3  # bytes: a trigram's length (a shorter run cannot be looked up, nor hold a longer one)
MAX_TEXTS = 2_048
MAX_RUNS = 60_000


def runs(s: str) -> set[bytes]:
    """The distinct runs of ``s`` (any length), as UTF-8."""
    return set(s.encode("utf-8", "surrogatepass").translate(_SEPARATORS).split())


class Prefilter:
    """The runs of a conversation's texts, each text read once (:meth:`add`); shared by the requests
    of one conversation, so additions and look-ups are made under a lock."""

    def __init__(self, max_texts: int = MAX_TEXTS, max_runs: int = MAX_RUNS) -> None:
        self.max_texts, self.max_runs = max_texts, max_runs
        self._lock = threading.Lock()
        self._bit: dict[str, int] = {}  # a text's key -> its bit in the masks
        self._texts: dict[bytes, int] = {}  # a run of MIN_RUN bytes or more -> the mask of the texts that have it
        self._run: dict[int, bytes] = {}  # a run's number -> the run
        self._grams: dict[bytes, bytearray] = {}  # a trigram -> the numbers of the runs holding it (packed "i")

    def bit(self, key: str) -> int | None:
        """The text's bit; None when it was not added."""
        return self._bit.get(key)

    def add(self, key: str, text: str) -> bool:
        """Read ``text`` once, under ``key``. False when the index is full (the text stays unknown)."""
        if key in self._bit:
            return True
        long = [r for r in runs(text) if len(r) >= MIN_RUN]
        with self._lock:
            if key in self._bit:
                return True
            if len(self._bit) >= self.max_texts or len(self._texts) >= self.max_runs:
                return False
            bit = self._bit[key] = 1 << len(self._bit)
            texts, numbered = self._texts, self._run
            new: dict[bytes, list[int]] = {}  # (this text's, then packed onto each trigram's bytes once)
            for r in long:
                m = texts.get(r)
                texts[r] = bit if m is None else m | bit
                if m is None:  # a run new to the conversation: listed under each of its trigrams
                    n = len(numbered)
                    numbered[n] = r
                    for i in range(len(r) - 2):
                        g = r[i:i + 3]
                        a = new.get(g)
                        if a is None:
                            new[g] = [n]
                        else:
                            a.append(n)
            grams = self._grams
            for g, a in new.items():
                packed = array("i", a).tobytes()
                held = grams.get(g)
                if held is None:
                    grams[g] = bytearray(packed)
                else:
                    held += packed  # in place (amortised): no view of it outlives a call made under the lock
            return True

    def read(self, texts: Iterable[tuple[str, str]], chars: int) -> None:
        """:meth:`add` each (key, text) not added yet, until ``chars`` characters were read: what one
        call may cost (the others are read by a later call)."""
        for key, text in texts:
            if chars <= 0:
                return
            if key not in self._bit:
                chars -= len(text)
                self.add(key, text)

    def holders(self, strings: Iterable[str]) -> dict[str, int | None]:
        """Each string -> the mask of the texts added that could hold it as a substring (None: any
        text, the string has no run of MIN_RUN bytes). A text holding it is always in its mask."""
        with self._lock:
            return {s: self._holders(s) for s in strings}

    def _holders(self, s: str) -> int | None:
        mask = None
        for r in runs(s):
            if len(r) < MIN_RUN:
                continue
            mask = self._run_holders(r) if mask is None else mask & self._run_holders(r)
            if not mask:
                return 0
        return mask

    def _run_holders(self, r: bytes) -> int:
        """The mask of the texts with a run that holds ``r``."""
        rarest: bytearray | None = None
        for i in range(len(r) - 2):
            got = self._grams.get(r[i:i + 3])
            if got is None:
                return 0  # no run holds this trigram of r, so none holds r
            if rarest is None or len(got) < len(rarest):
                rarest = got
        m = 0
        numbered, texts = self._run, self._texts
        # (the views are released on leaving: a bytearray with a view cannot grow, and add extends it)
        with memoryview(rarest or b"") as view, view.cast("i") as numbers:
            for n in numbers:
                run = numbered[n]
                if r in run:
                    m |= texts[run]
        return m
