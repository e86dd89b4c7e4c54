"""Memory's share of the proxy under load (issue 19): each text is redacted once on its way in; the
memory stage reads its ingestion marker once per request; the recall stage hands originals to the
memory process without waiting for it."""

from __future__ import annotations

import os
import signal
import time

import pytest

from contextwarden.events import EventBus
from contextwarden.memory import ingest
from contextwarden.memory.client import RemoteMemoryService
from contextwarden.memory.ingest import Ingestor
from contextwarden.memory.items import MemoryItem
from contextwarden.memory.pending import PendingTable
from contextwarden.memory.service import get_service

from .support.memstore import events, item, store
from .test_memory_secrets import planted
from .test_memory_stage import replayer


def test_a_text_is_redacted_once_from_the_journal_to_the_store_and_the_originals(cw_home, monkeypatch):
    calls: list[str] = []
    real = ingest.redact_secrets

    def counting(text):
        calls.append(text)
        return real(text)

    monkeypatch.setattr(ingest, "redact_secrets", counting)
    secrets = [s for s, _ in planted().values()][:4]
    long_text = "\n".join(f"line {i}: export TOKEN_{i}={secrets[i % len(secrets)]}" for i in range(300))  # chunked
    items = [item(f"my key is {s}", turn=i) for i, s in enumerate(secrets)] + [item(long_text, turn=9, kind="tool_result")]
    originals: list[MemoryItem] = []
    s = store(cw_home)
    bus = EventBus()
    ing = Ingestor(s, bus, queue_size=1000, chunk_tokens=120, journal=PendingTable(cw_home / "pending.sqlite"),
                   on_originals=originals.extend)
    try:
        assert ing.submit(items)
        assert ing.flush(300)
    finally:
        ing.close()
    assert len(calls) == len(items)  # once each (it was three times for a cut text)
    ev = [e for e in events(bus, "memory") if "ingested" in e][-1]
    assert ev["chunks"] > 1 and ev["redacted"] >= len(secrets)  # still counted, where it was done
    assert len(originals) == len(items)
    stored = " ".join(it.text for it in originals)
    for sec in secrets:
        assert sec not in stored
    s.close()


class _State:
    """A state store that counts reads (the memory marker's namespace only)."""

    shared = False

    def __init__(self) -> None:
        self.reads = 0

    def get(self, ns, key, default=None):
        if ns == "memory.ingested":
            self.reads += 1
        return default


def test_the_ingestion_marker_is_read_once_per_request():
    import importlib

    mem = importlib.import_module("contextwarden.plugins.memory")

    class Rt:
        state = _State()

    class Ctx:
        runtime = Rt()
        tenant, session, api, notes = "t", "s", None, {}

    ctx = Ctx()
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert mem._ingest_start(ctx, msgs) == (0, True)
    assert mem._ingest_start(ctx, msgs) == (0, True)  # cw_turn_complete: the request's own reading
    assert Rt.state.reads == 1


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_keep_does_not_wait_for_a_busy_memory_process(tmp_path):
    rp = replayer(tmp_path, "memory: {process: separate}")
    try:
        svc = get_service(rp.runtime)
        assert isinstance(svc, RemoteMemoryService) and svc.available
        its = [MemoryItem(text=f"original {i}: the retry loop lives in sync_worker.py", session="s1", tenant="t-keep",
                          turn=i, role="tool", kind="tool_result", source_id=f"m-{i:016x}") for i in range(3)]
        os.kill(svc.pid, signal.SIGSTOP)  # the memory process cannot answer anything now
        try:
            ids = svc.keep(its, searchable=False)
            assert ids == [it.source_id for it in its]
            assert not svc._calls  # sent, nothing waited for
        finally:
            os.kill(svc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 60
        got = []
        while time.monotonic() < deadline and len(got) < 3:
            got = svc.recall(ids, ["t-keep"])
        assert sorted(it.text for it in got) == sorted(it.text for it in its)
    finally:
        rp.close()


class _GatedEmbedder:
    """The real model, held on its first call until ``gate`` opens: the journal fills behind it."""

    def __init__(self, inner) -> None:
        import threading

        self.inner, self.gate, self.entered = inner, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, texts):
        self.entered.set()
        self.gate.wait(120)
        return self.inner(texts)


def test_past_pending_max_the_oldest_are_stored_as_text_and_embedded_later_never_dropped(cw_home):
    from contextwarden.memory.store import partition_name

    s = store(cw_home)
    gated = _GatedEmbedder(s.embedder)
    s.embedder = gated
    bus = EventBus()
    added: list[MemoryItem] = []
    ing = Ingestor(s, bus, queue_size=1000, journal=PendingTable(cw_home / "pending.sqlite", max_items=10),
                   on_added=added.extend, backfill=False)
    texts = [f"Note {i}: the build of module {i} needs the flag --opt-{i} set." for i in range(18)]
    try:
        assert ing.submit([item(texts[0], turn=0), item(texts[1], turn=1)])
        assert gated.entered.wait(60)  # the worker embeds the first submission; the rest piles up
        for k in range(2, 18, 2):
            assert ing.submit([item(texts[k], turn=k), item(texts[k + 1], turn=k + 1)])
        assert ing.journal.items == 18 > ing.journal.max_items
        gated.gate.set()
        assert ing.flush(300)
        deadline = time.monotonic() + 120
        while ing.deferred and time.monotonic() < deadline:  # embedded later, once the journal is empty
            time.sleep(0.1)
    finally:
        gated.gate.set()
        ing.close()
    mem = events(bus, "memory")
    assert ing.stats["dropped"] == 0 and not any(e.get("dropped") for e in mem)
    # the oldest waiting were stored as text at once (searchable by BM25 through on_added), then embedded
    # (18 waiting, 2 of them being embedded: once those are stored, 16 wait, 6 over the bound of 10)
    assert sum(e.get("text_only") or 0 for e in mem) == ing.stats["stored_text_only"] == 6
    assert sum(e.get("backfilled") or 0 for e in mem) == ing.stats["stored_text_only"] and ing.deferred == 0
    assert sorted(it.text for it in added) == sorted(texts)
    assert s._text_col.count() == 0 and s._part(partition_name("t-a")).count() == 18
    assert all(isinstance(e.get("lag_s"), float) for e in mem if "ingested" in e)  # the embedding lag, reported
    s.close()


def test_the_tui_totals_show_what_memory_stored_what_waits_and_what_it_dropped():
    from rich.console import Console

    from contextwarden.addons.eventserver import Totals
    from contextwarden.tui.store import Store
    from contextwarden.tui.widgets.overview import traffic_table

    t = Totals()
    t.add({"type": "request", "data": {}})
    t.add({"type": "memory", "data": {"injected": 2, "tokens": 40}})  # a search: not ingestion
    t.add({"type": "memory", "data": {"ingested": 12, "new": 10, "queued": 300, "lag_s": 42.0}})
    t.add({"type": "memory", "data": {"ingested": 8, "new": 8, "queued": 120, "lag_s": 30.5, "text_only": 8}})
    assert (t.memory_stored, t.memory_text_only, t.memory_pending, t.memory_lag_s, t.memory_dropped) == (18, 8, 120, 30.5, 0)
    assert Totals.from_dict(t.to_dict()).to_dict() == t.to_dict()
    store = Store()
    store.totals = t
    console = Console(width=80, record=True)
    console.print(traffic_table(store, 0.0))
    text = console.export_text()
    assert "memory stored" in text and "120 (30 s behind)" in text and "memory dropped" not in text
    t.add({"type": "memory", "data": {"dropped": 5, "pending": 400_000}})
    console.print(traffic_table(store, 0.0))
    assert "memory dropped" in console.export_text()
