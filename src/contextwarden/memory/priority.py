"""Searches before ingestion, inside the memory service.

A search runs on a request's clock (the memory stage's budget); ingestion (redacting, tagging, chunking,
embedding and storing what the turns said) may lag. Both run in the memory process, and the ingestion
worker's Python work holds the interpreter lock in long stretches: under load, a search waited behind a
batch of embeddings and most searches ran past their budget (issue 19: 176 of 198).

So the threads that do background work (the ingestion worker, the thread that takes submissions into
the pending table) call :meth:`SearchFirst.pause` between their steps (before each embedding run, each
batch's tagging and storing): while a search is running, they wait for it to finish, up to
``max_wait_s`` (a stream of searches must not starve ingestion for ever: it lags, it is never dropped).
A thread that is not registered as background never waits, so the search's own query embedding goes
through the same embedder untouched.
"""

from __future__ import annotations

import threading
import time


class SearchFirst:
    def __init__(self, max_wait_s: float = 2.0) -> None:
        self.max_wait_s = max_wait_s
        self._cv = threading.Condition()
        self._active = 0
        self._local = threading.local()  # .background: this thread's work waits for searches
        self.paused_s = 0.0  # how long background work waited for searches, in all
        self.pauses = 0
        self.waiting = 0  # background threads waiting now

    # --- searches -----------------------------------------------------------------------------------
    def __enter__(self) -> SearchFirst:
        with self._cv:
            self._active += 1
        return self

    def __exit__(self, *exc) -> None:
        with self._cv:
            self._active -= 1
            if self._active <= 0:
                self._active = 0
                self._cv.notify_all()

    @property
    def searching(self) -> int:
        return self._active

    # --- background work ----------------------------------------------------------------------------
    def background(self) -> None:
        """The calling thread does background work: :meth:`pause` makes it wait for searches."""
        self._local.background = True

    def is_background(self) -> bool:
        return getattr(self._local, "background", False)

    def pause(self) -> float:
        """On a background thread, while a search runs: wait until none does (at most ``max_wait_s``).
        Returns the seconds waited (0 at once when no search runs: an int read, no lock)."""
        if not self._active or not getattr(self._local, "background", False):
            return 0.0
        t0 = time.monotonic()
        with self._cv:
            self.waiting += 1
            try:
                self._cv.wait_for(lambda: self._active <= 0, timeout=self.max_wait_s)
            finally:
                self.waiting -= 1
        waited = time.monotonic() - t0
        self.paused_s += waited
        self.pauses += 1
        return waited
