"""Searches before ingestion in the memory service (issue 19): ingestion's threads wait between their
steps while a search runs; nothing they hold is dropped, it only lags."""

from __future__ import annotations

import threading

from contextwarden.core.events import EventBus
from contextwarden.memory.ingest import Ingestor
from contextwarden.memory.pending import PendingTable
from contextwarden.memory.priority import SearchFirst
from tests.support.memstore import embedder, events, item, store


def _until(pred, timeout=60.0) -> bool:
    ev = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if pred():
            return True
        ev.wait(0.02)
    return pred()


def test_a_background_thread_waits_for_a_running_search_and_others_never_wait():
    gate = SearchFirst(max_wait_s=60)
    done: list[str] = []

    def background():
        gate.background()
        gate.pause()
        done.append("background")

    with gate:
        assert gate.pause() == 0.0  # not a background thread: never waits
        t = threading.Thread(target=background)
        t.start()
        assert _until(lambda: gate.waiting == 1)
        assert t.is_alive() and done == []  # waiting for the search
    t.join(30)
    assert done == ["background"] and gate.pauses == 1
    # no search running: a background thread passes at once
    gate.background()
    assert gate.pause() == 0.0 and gate.pauses == 1


def test_a_background_thread_goes_on_after_max_wait_so_ingestion_is_never_starved():
    gate = SearchFirst(max_wait_s=0.05)
    gate.background()
    with gate:
        assert gate.pause() > 0  # a stream of searches: ingestion lags, it does not stop
    assert gate.pauses == 1


def test_the_embedder_yields_between_its_runs():
    emb = embedder()
    calls: list[int] = []
    emb.pause = lambda: calls.append(1) or 0.0
    try:
        texts = [f"text number {i} about the parser" for i in range(70)]  # more than one run of 32 rows
        out = emb(texts)
    finally:
        del emb.pause
    assert out.shape[0] == 70 and len(calls) == len(emb.batches([8] * 70)) >= 3


def test_ingestion_waits_while_a_search_runs_then_stores_everything(cw_home):
    s = store(cw_home)
    gate = SearchFirst(max_wait_s=120)
    s.pause = gate.pause
    bus = EventBus()
    ing = Ingestor(s, bus, chunk_tokens=120, journal=PendingTable(cw_home / "pending.sqlite"),
                   priority=gate)
    try:
        with gate:  # a search is running for the whole submission
            assert ing.submit([item(f"note {i}: the deploy script reads DEPLOY_ENV", turn=i) for i in range(5)])
            assert _until(lambda: gate.waiting == 1)
            # the worker waits before its first step: nothing stored yet, nothing dropped
            assert len(list(s.iter_items())) == 0 and ing.pending == 5
        assert ing.flush(300)
    finally:
        ing.close()
    assert len(list(s.iter_items())) == 5 and gate.pauses >= 1
    assert not [e for e in events(bus, "memory") if e.get("dropped")]
    s.close()


def test_a_submission_is_searchable_by_its_words_at_once_while_a_search_runs(cw_home):
    """Issue 40 (fresh under load): the memory process's submission thread indexes a turn by its words in
    the submitting call, without waiting for searches (only the storer waits); the embedding follows."""
    from contextwarden.memory.lexical import LexicalIndex

    s = store(cw_home)
    gate = SearchFirst(max_wait_s=600)  # (a submission that waited for the search would wait this long)
    s.pause = gate.pause
    lexical = LexicalIndex()
    ing = Ingestor(s, EventBus(), chunk_tokens=120, journal=PendingTable(cw_home / "pending.sqlite"),
                   priority=gate, on_indexed=lexical.add)
    waited = threading.Event()
    try:
        with gate:  # a search runs the whole time
            def submit() -> None:
                gate.background()  # as the memory process's submission thread
                assert ing.submit([item("the deploy script reads DEPLOY_ENV from zq-fresh-7", turn=0)])
                waited.set()

            t = threading.Thread(target=submit)
            t.start()
            assert waited.wait(120)  # not held for the search
            hits = lexical.query("zq-fresh-7", ["t-a"], n=1)
            assert hits and "DEPLOY_ENV" in hits[0].item.text  # searchable by its words already
            assert _until(lambda: gate.waiting == 1)  # the storer waits for the search
            assert len(list(s.iter_items())) == 0
            t.join(60)
        assert ing.flush(300)
    finally:
        ing.close()
    assert len(list(s.iter_items())) == 1
    s.close()
