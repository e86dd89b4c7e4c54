"""Ingestion's embeddings in a worker process at the idle CPU priority (memory/embedworker.py): the same
vectors as in-process, only background threads' embeddings go there, and once closed (shutdown) a batch
fails instead of running in the memory process."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from contextwarden.memory import embedworker
from contextwarden.memory.embedder import Embedder
from contextwarden.memory.embedworker import BackgroundEmbedder, Closed
from contextwarden.memory.service import CachedEmbedder
from tests.conftest import MODEL_DIR
from tests.support.wait import wait_until

TEXTS = ["hi", "def load(path):\n    return json.load(open(path))\n", "word " * 400, "Ünïcödé 🎉 日本語"]


@pytest.fixture(scope="module")
def inner():
    return Embedder(MODEL_DIR)


@pytest.mark.parametrize("group_nice", [0, 10, 19], ids=["full-share", "embed-group-nice-10", "index-first"])
def test_the_worker_gives_the_in_process_vectors_at_the_idle_priority(inner, group_nice):
    bg = BackgroundEmbedder(inner, MODEL_DIR, group_nice=group_nice)
    try:
        got = bg(TEXTS)
        assert np.allclose(got, inner(TEXTS), atol=1e-5) and got.shape == (len(TEXTS), 384)
        # the word pieces' states too (memory/asides.py:Pieces learns a turn's there)
        for (m, ids), (m0, ids0) in zip(bg.states(TEXTS), inner.states(TEXTS), strict=True):
            assert ids == ids0 and m.shape == m0.shape and np.allclose(m, m0, atol=1e-4)
        assert bg.fallbacks == 0
        (pid,) = bg.pids()
        assert pid != os.getpid()
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE  # the kernel runs it on CPU nobody else wants
        group = Path(f"/proc/{pid}/autogroup")
        if group.exists():  # ... and its session's group weighs what it was given (19 in the memory
            # process): the class alone did not lower the group's share
            assert os.getsid(pid) == pid and group.read_text().split()[-1] == str(group_nice)
    finally:
        bg.close()
    with pytest.raises(Closed):  # shutting down: the batch fails (its rows stay pending), not run here
        bg(["after close"])


def test_only_background_threads_embed_in_the_worker(inner):
    calls = []

    class Recorder:
        dim = 384

        def __init__(self, name):
            self.name = name

        def __call__(self, texts):
            calls.append((self.name, list(texts)))
            return inner(texts)

        def states(self, texts):
            calls.append((self.name + " states", list(texts)))
            return inner.states(texts)

    def store() -> None:
        cached(["what a turn said"])
        cached.states(["what a turn said"])

    cached = CachedEmbedder(Recorder("in-process"))
    t = threading.Thread(target=store)  # as the storer
    cached.background, cached.is_background = Recorder("worker"), lambda: threading.current_thread() is t
    cached(["a search's query"])
    cached.states(["a search's query"])
    t.start()
    t.join(30)
    assert calls == [("in-process", ["a search's query"]), ("in-process states", ["a search's query"]),
                     ("worker", ["what a turn said"]), ("worker states", ["what a turn said"])]


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="scheduling classes are Linux's")
def test_the_model_is_loaded_before_the_worker_drops_to_the_idle_class(inner):
    """At the idle class on a machine that never idles (CI beside other jobs), the worker's imports and
    model took minutes: it loads them as it starts, at its starting class, then every thread of it runs at
    the idle class."""

    bg = BackgroundEmbedder(inner, MODEL_DIR, group_nice=19)
    try:
        wait_until(lambda: bg.loaded is not None, 120)
        assert bg.loaded == (os.SCHED_OTHER, os.SCHED_IDLE)
        (pid,) = bg.pids()
        tids = os.listdir(f"/proc/{pid}/task")
        assert tids and all(os.sched_getscheduler(int(t)) == os.SCHED_IDLE for t in tids)
        got = bg(TEXTS)  # the loaded model answers (no second load)
        assert np.allclose(got, inner(TEXTS), atol=1e-5) and bg.fallbacks == 0
    finally:
        bg.close()


def test_the_worker_keeps_the_models_weights_int8(monkeypatch):
    """The worker's embedder is loaded unfolded (``Embedder(fold=False)``: ~70 MB less resident once it has
    embedded a full batch; tests/contextwarden/memory/test_embedder.py); the memory process's, which embeds each
    search's query, folded (a query in ~3.5 ms instead of ~9)."""
    made: list[dict] = []

    class Loaded:
        def __init__(self, *args, **kwargs) -> None:
            made.append(kwargs)

        def warm(self) -> None:
            pass

    monkeypatch.setattr(embedworker, "Embedder", Loaded)
    monkeypatch.setattr(embedworker, "_idle", lambda group_nice=0: None)
    embedworker._loaded.__wrapped__(str(MODEL_DIR), 0)
    assert made == [{"threads": 1, "fold": False}]
