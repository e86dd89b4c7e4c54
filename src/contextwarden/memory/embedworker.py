"""Ingestion's embeddings in a process of their own, at the lowest CPU priority (``SCHED_IDLE``).

Embedding is memory's biggest CPU cost and none of it is on a request's clock. At the idle scheduling
class, its session's scheduling group at the lowest weight (:func:`_idle`), the kernel runs the worker
only on CPU nobody else wants: under load embedding lags (each item is searchable by its words as it is
submitted, ``ingest.py``); idle, it catches up at full speed. A thread of the memory process could not do
this: descheduled, it could hold the interpreter lock the searches need. Why both the class and the
group: docs/memory-process.md.

Only the ingestor's storer comes here; searches embed their short queries in the memory process, at
once. Fails open: a worker that cannot start, dies or does not answer in time leaves the call to the
in-process embedder, except once closed (shutdown), where the batch fails and its rows stay pending.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading

import numpy as np

from ..core.workerpool import Offload, Unavailable
from .embedder import Embedder

GROUP_NICE = 19  # the worker's scheduling group: the lowest weight (requests first, vectors lag)


def embed(model_dir: str, texts: list[str], group_nice: int = GROUP_NICE) -> np.ndarray:
    """The vectors of ``texts`` (runs in the worker process; ``group_nice``: its scheduling group's nice
    value)."""
    return _loaded(model_dir, group_nice)(texts)


def states(model_dir: str, texts: list[str], group_nice: int = GROUP_NICE) -> list[tuple[np.ndarray, list[int]]]:
    """The word pieces' states of ``texts`` (:meth:`.embedder.Embedder.states`; runs in the worker)."""
    return _loaded(model_dir, group_nice).states(texts)


def load(model_dir: str, group_nice: int = GROUP_NICE) -> tuple[int, int]:
    """Load and warm the model now (the worker's first call, sent as it starts); the scheduling policy
    the loading ran at and the one the worker runs at after (for the tests: ``SCHED_OTHER``, then
    ``SCHED_IDLE`` on Linux)."""
    during = _policy()
    _loaded(model_dir, group_nice)
    return during, _policy()


@functools.cache
def _loaded(model_dir: str, group_nice: int) -> Embedder:
    """The worker's embedder of ``model_dir`` (once per worker process), loaded at the priority the
    worker started with and only then moved to the idle class (loaded there, it took minutes on a
    machine that never idles)."""
    e = Embedder(model_dir, threads=1, fold=False)  # (~70 MB less resident once it has embedded; ~5 ms more a run)
    e.warm()
    _idle(group_nice)
    return e


def _policy() -> int:
    try:
        return os.sched_getscheduler(0)
    except (AttributeError, OSError):
        return -1


def _idle(group_nice: int = 0) -> None:
    """Every thread of this process to the idle scheduling class (Linux; elsewhere the lowest nice value), and
    its scheduling group to nice ``group_nice``: with Linux's autogroups every session is a group with
    one weight whatever its tasks' classes, and an idle-class worker alone in its session's group took a
    full group's share (measured: 50% against a busy loop; with the group at nice 19: 1%)."""
    try:
        # every thread of the process: a policy is a thread's own
        for tid in _threads_of_process():
            with contextlib.suppress(ProcessLookupError):  # (a thread that ended meanwhile)
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(AttributeError, OSError):
            os.nice(19)
    if group_nice > 0:
        group_weight(group_nice)


def _threads_of_process() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # (no /proc: this thread only)
        return [0]


def group_weight(nice: int) -> bool:
    """Nice ``nice`` for this process's autogroup, when it leads its own session (the group is then its
    own and its children's, nobody else's); False when there is no such group or it may not be changed
    (not its own, or the kernel's rate limit)."""
    try:
        if os.getsid(0) != os.getpid():
            return False
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(max(0, min(19, int(nice)))))
        return True
    except (AttributeError, OSError, ValueError):
        return False


class Closed(RuntimeError):
    """The background embedder was closed while a batch waited on it (shutdown)."""


class BackgroundEmbedder:
    """``__call__(texts)`` and ``states(texts)`` as the in-process ``inner`` embedder gives, computed in the
    worker process."""

    def __init__(self, inner, model_dir: str, timeout_s: float = 900.0, start_s: float = 60.0,
                 group_nice: int = GROUP_NICE) -> None:
        self.inner = inner
        self.model_dir = str(model_dir)
        self.group_nice = group_nice
        self.timeout_s = timeout_s
        self.start_s = start_s
        self._offload = Offload(workers=1, role="embedding")
        self._offload.start()
        self._closed = threading.Event()
        self.fallbacks = 0  # calls the in-process embedder answered (the worker was unavailable)
        self.loaded: tuple[int, int] | None = None  # load()'s answer, once the worker has the model
        # the model loads as the memory service starts, at the worker's starting priority (_loaded),
        # not with the first batch; a batch sent meanwhile waits for the worker as it would anyway
        self._loading = threading.Thread(target=self._load, name="cw-embed-load", daemon=True)
        self._loading.start()

    def _load(self) -> None:
        # (Unavailable: closed meanwhile, or it could not start: the first batch tries again)
        with contextlib.suppress(Unavailable):
            if self._offload.wait_ready(self.start_s):
                self.loaded = self._offload.call(load, self.model_dir, self.group_nice, timeout=self.timeout_s)

    def pids(self) -> list[int]:
        return self._offload.pids()

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self._call(embed, texts, self.inner)

    def states(self, texts: list[str]) -> list[tuple[np.ndarray, list[int]]]:
        return self._call(states, texts, self.inner.states)

    def _call(self, fn, texts: list[str], here):
        if not self._closed.is_set():
            # (Unavailable: closed meanwhile: Closed below; else the in-process embedder answers)
            with contextlib.suppress(Unavailable):
                self._offload.wait_ready(self.start_s)
                return self._offload.call(fn, self.model_dir, list(texts), self.group_nice, timeout=self.timeout_s)
        if self._closed.is_set():
            raise Closed("memory is shutting down")
        self.fallbacks += 1
        return here(texts)

    def close(self) -> None:
        self._closed.set()
        self._offload.close()
