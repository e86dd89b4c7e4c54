"""Memory's share of the proxy under load (issue 19): each text is redacted once on its way in; the
memory stage reads its ingestion marker once per request; the recall stage hands originals to the
memory process without waiting for it."""

from __future__ import annotations

import os
import signal

import pytest

from contextwarden.core.events import EventBus
from contextwarden.memory import ingest
from contextwarden.memory.client import RemoteMemoryService
from contextwarden.memory.ingest import Ingestor
from contextwarden.memory.items import MemoryItem
from contextwarden.memory.pending import PendingTable
from contextwarden.memory.service import get_service
from tests.contextwarden.util.test_redact import planted
from tests.plugins.test_memory import replayer
from tests.support.memstore import events, item, store
from tests.support.wait import wait_until


def counting_redactions(monkeypatch, *modules) -> list[str]:
    """The texts ``redact_secrets`` is called with, through each of ``modules``' names for it."""
    from contextwarden.util import redact as secrets

    calls: list[str] = []
    real = secrets.redact_secrets

    def counting(text):
        calls.append(text)
        return real(text)

    for m in modules:
        monkeypatch.setattr(m, "redact_secrets", counting)
    return calls


def test_a_text_is_redacted_once_from_the_journal_to_the_store_and_the_originals(cw_home, monkeypatch):
    calls = counting_redactions(monkeypatch, ingest)
    secrets = [s for s, _ in planted().values()][:4]
    long_text = "\n".join(f"line {i}: export TOKEN_{i}={secrets[i % len(secrets)]}" for i in range(300))  # chunked
    items = [item(f"my key is {s}", turn=i) for i, s in enumerate(secrets)] + [item(long_text, turn=9, kind="tool_result")]
    originals: list[MemoryItem] = []
    s = store(cw_home)
    bus = EventBus()
    ing = Ingestor(s, bus, chunk_tokens=120, journal=PendingTable(cw_home / "pending.sqlite"),
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
        memos: dict = {}

        def memo(self, name, factory):  # (the runtime's caches: the state cache is one)
            return self.memos.setdefault(name, factory())

    class Ctx:
        runtime = Rt()
        tenant, session, api, notes, history = "t", "s", None, {}, None

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
        got = wait_until(lambda: len(r := svc.recall(ids, ["t-keep"])) >= 3 and r, 60) or []
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
    ing = Ingestor(s, bus, journal=PendingTable(cw_home / "pending.sqlite", max_items=10),
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
        wait_until(lambda: not ing.deferred, 120, interval=0.1)  # embedded later, once the journal is empty
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


def test_what_waits_for_its_vector_is_searchable_by_its_words_and_recallable_at_once(cw_home):
    """Embedding lags under load (the worker runs at the lowest priority): each submission is searchable
    by its words, and its originals recallable, as soon as it is submitted, before the storer embeds it."""
    from contextwarden.memory.lexical import LexicalIndex
    from contextwarden.memory.originals import OriginalStore

    s = store(cw_home)
    gated = _GatedEmbedder(s.embedder)
    s.embedder = gated
    bus = EventBus()
    lexical = LexicalIndex()
    added: list[MemoryItem] = []
    originals = OriginalStore(cw_home)
    ing = Ingestor(s, bus, chunk_tokens=120, journal=PendingTable(cw_home / "pending.sqlite"),
                   on_indexed=lexical.add, on_added=added.extend, on_originals=originals.put, backfill=False,
                   tag=lambda text: ["uploads"] if "upload" in text else [])
    first = item("warm-up note: nothing to see", turn=0)
    late = [item(f"the flaky test test_upload_{i} needs RETRIES={i} in CI", turn=i + 1) for i in range(6)]
    late.append(item("\n".join(f"def handler_{i}(event): return route(event, 'zanzibar-{i}')" for i in range(80)),
                     turn=9, kind="tool_result"))  # a long tool output: chunked, each chunk searchable
    try:
        assert ing.submit([first])
        assert gated.entered.wait(60)  # the storer is stuck embedding the first submission
        for it in late:
            assert ing.submit([it])
        assert ing.indexed == len(late) and not added  # indexed by the submissions themselves, nothing stored yet
        hits = lexical.query("test_upload_3 RETRIES", ["t-a"], n=3)
        assert hits and hits[0].item.text == late[3].text and hits[0].item.tags == []  # tagged when stored
        hits = lexical.query("zanzibar-77", ["t-a"], n=3)
        assert hits and hits[0].item.kind == "chunk" and "zanzibar-77" in hits[0].item.text
        assert s.get_by_ids([hits[0].item.source_id], ["t-a"]) == []  # not in the store yet ...
        assert [o.text for o in originals.get([hits[0].item.source_id], ["t-a"])] == [late[6].text]  # ... recallable
        gated.gate.set()
        assert ing.flush(300)
    finally:
        gated.gate.set()
        ing.close()
    assert ing.indexed == 0 and ing.stats["dropped"] == 0
    assert lexical.query("test_upload_3 RETRIES", ["t-a"], n=1)[0].item.tags == ["uploads"]  # the storer's tags
    stored = {it.id for it in s.iter_items()}
    assert {it.id for it in added} == stored and len(lexical) == len(stored)  # the same items, indexed once
    mem = [e for e in events(bus, "memory") if "ingested" in e]
    assert any(e.get("indexed") for e in mem)  # the backlog searchable by words, reported with each batch
    originals.close()
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
    t.add({"type": "memory", "data": {"ingested": 8, "new": 8, "queued": 120, "lag_s": 30.5, "text_only": 8,
                                      "indexed": 96}})
    assert (t.memory_stored, t.memory_text_only, t.memory_pending, t.memory_lag_s, t.memory_dropped) == (18, 8, 120, 30.5, 0)
    assert t.memory_indexed == 96
    assert Totals.from_dict(t.to_dict()).to_dict() == t.to_dict()
    store = Store()
    store.totals = t
    console = Console(width=80, record=True)
    console.print(traffic_table(store, 0.0))
    text = console.export_text()
    assert "memory stored" in text and "memory dropped" not in text
    assert "120 (96 searchable by words; 30 s behind)" in text
    t.add({"type": "memory", "data": {"dropped": 5, "pending": 400_000}})
    console.print(traffic_table(store, 0.0))
    assert "memory dropped" in console.export_text()
    # caught up: the last item waited 2 s, nothing waits now, so nothing is "behind" (seen in the TUI)
    caught = Totals()
    caught.add({"type": "memory", "data": {"ingested": 5, "new": 5, "queued": 0, "lag_s": 2.0}})
    store.totals = caught
    console = Console(width=80, record=True)
    console.print(traffic_table(store, 0.0))
    row = next(line for line in console.export_text().splitlines() if "memory waiting to embed" in line)
    assert row.split()[-1] == "0" and "behind" not in row


def test_the_shutdown_snapshot_of_the_lexical_index_keeps_to_its_budget():
    """Under load the index also holds what waits for its vectors; writing it took seconds past the
    shutdown's budget. Past the budget the process goes without a new snapshot (rebuilt at next start)."""
    import threading
    from types import SimpleNamespace

    from contextwarden.memory.service import MemoryService

    release = threading.Event()
    bus = EventBus()
    done = threading.Event()
    fake = SimpleNamespace(save_lexical=lambda flush: (release.wait(30), done.set()), bus=bus, lexical=[1, 2, 3])
    MemoryService._save_lexical_within(fake, 0.3)
    assert not done.is_set()  # not waited for past the budget
    release.set()
    assert events(bus, "memory") == [{"snapshot": "skipped", "reason": "not written in 0.3 s of shutdown",
                                      "lexical_items": 3}]
    quick = SimpleNamespace(save_lexical=lambda flush: None, bus=bus, lexical=[])
    MemoryService._save_lexical_within(quick, 0.3)
    assert len(events(bus, "memory")) == 1


def test_a_kept_text_is_redacted_once_for_its_original_and_for_the_searchable_store(tmp_path, monkeypatch):
    """keep() hands its texts to the keeper thread, which redacts each once and writes the original and
    the journal row from that (the submission, made in keep() on the connection's thread, redacted it
    again: 2 ms per 12 KB of code); keep() itself only queues."""
    from contextwarden.memory.service import REDACT_MEMO_MIN, MemoryService
    from contextwarden.util import redact as secrets

    calls = counting_redactions(monkeypatch, secrets, ingest)
    rp = replayer(tmp_path)
    try:
        svc = get_service(rp.runtime)
        assert isinstance(svc, MemoryService) and svc.ingestor is not None
        sec = [s for s, _ in planted().values()][0]
        # (texts the size of a tool's output: MemoryService.redact remembers those of REDACT_MEMO_MIN or more)
        its = [MemoryItem(text=f"output {i}: export API_TOKEN={sec}\n" + f"the retry loop lives in sync_worker_{i}.py\n" * 12,
                          session="s1", tenant="t-keep", turn=i, role="tool", kind="tool_result",
                          source_id=f"m-{i:016x}") for i in range(3)]
        assert all(len(it.text) >= REDACT_MEMO_MIN for it in its)
        before = svc.ingestor.stats["submitted"]
        ids = svc.keep(its)
        assert ids == [it.source_id for it in its]
        assert svc.flush(120)
        assert sorted(calls) == sorted(it.text for it in its)  # once each
        got = svc.recall(ids, ["t-keep"])
        assert len(got) == 3 and all(sec not in g.text and "[REDACTED:" in g.text for g in got)
        assert svc.ingestor.stats["submitted"] - before == 3  # and searchable
        assert svc.ingestor.stats["redacted"] >= 3  # the secrets removed are still counted
        stored = svc.store.get_by_ids(ids, ["t-keep"], None)
        assert stored and all(sec not in it.text for it in stored)
        assert {it.source_id for it in stored} == set(ids)
    finally:
        rp.close()


def test_a_compressed_results_original_and_its_turn_are_redacted_once(tmp_path, monkeypatch):
    """A compressed result's original is kept (``searchable=False``) as its request is read, and the same
    text comes to be stored when its turn ends: the memory service redacts it once (``redact``)."""
    from contextwarden.memory.ids import memory_id
    from contextwarden.memory.service import REDACT_MEMO_MIN, MemoryService
    from contextwarden.util import redact as secrets

    calls = counting_redactions(monkeypatch, secrets, ingest)
    rp = replayer(tmp_path)
    try:
        svc = get_service(rp.runtime)
        assert isinstance(svc, MemoryService)
        sec = [s for s, _ in planted().values()][0]
        text = "\n".join(f"line {i}: export API_TOKEN={sec}  # the retry loop lives in sync_worker.py" for i in range(30))
        assert len(text) >= REDACT_MEMO_MIN
        mid = memory_id(text)
        svc.keep([MemoryItem(text=text, session="s1", tenant="t-keep", turn=1, role="tool", kind="tool_result",
                             source_id=mid)], searchable=False)
        assert svc.flush_kept(60)
        again = "".join(list(text))  # its turn's text: equal, another string
        assert svc.submit([MemoryItem(text=again, session="s1", tenant="t-keep", turn=1, role="tool", kind="tool_result")])
        assert svc.flush(120)
        assert calls.count(text) == 1
        stored = svc.store.get_by_ids([mid], ["t-keep"], None)
        assert stored and all(sec not in it.text and it.source_id == mid for it in stored)
        short = "my key is " + sec  # shorter texts are redacted again: cheaper than remembering them
        assert len(short) < REDACT_MEMO_MIN
        svc.redact(short), svc.redact(short)
        assert calls.count(short) == 2
    finally:
        rp.close()


def test_an_original_kept_for_recall_alone_is_not_submitted_again_when_its_stub_hands_it_in(tmp_path, monkeypatch):
    """A result compressed when first seen: its original is kept for recall alone and its compressed text
    is what its turn stores. When clearing later replaces it with a stub, the memory stage hands the original
    in again under the stub's id (in case memory missed the turn): the memory service leaves it out, so the
    submission thread does not chunk and index 12 KB a turn behind which the next turns' words wait. An item
    under another id is still taken, and the original is still recalled by its id."""
    from contextwarden.memory.ids import memory_id

    rp = replayer(tmp_path)
    try:
        svc = get_service(rp.runtime)
        original = "\n".join(f"def handler_{i}(request):  # quokka_{i} reads the retry table" for i in range(200))
        mid = memory_id(original)
        assert svc.keep([MemoryItem(text=original, session="s1", tenant="t-k", turn=3, role="tool", kind="tool_result",
                                    source_id=mid)], searchable=False) == [mid]
        compressed = "handler_0 .. handler_199: 200 request handlers (quokka retry table)"
        assert svc.submit([MemoryItem(text=compressed, session="s1", tenant="t-k", turn=3, role="tool", kind="tool_result")])
        before = svc.ingestor.stats["submitted"]
        other = "the staging database lives on host wombat-db-2"
        assert svc.submit([MemoryItem(text=original, session="s1", tenant="t-k", turn=3, role="tool", kind="tool_result",
                                      source_id=mid),
                           MemoryItem(text=other, session="s1", tenant="t-k", turn=9, role="tool", kind="tool_result",
                                      source_id=memory_id(other))])
        assert svc.flush(120)
        assert svc.ingestor.stats["submitted"] - before == 1  # the other item only
        assert not [h for h in svc.search_hits("quokka_150", ["t-k"], k=5)["hits"] if "quokka_150" in h["text"]]
        assert svc.search_hits("wombat-db-2", ["t-k"], k=3)["hits"][0]["text"] == other
        assert [it.text for it in svc.recall([mid], ["t-k"])] == [original]
        # kept again under the same id (the recall stage, as the stub replaces it): not redacted and written again
        put = svc.originals.put
        written: list = []
        monkeypatch.setattr(svc.originals, "put", lambda its: written.append(its) or put(its))
        assert svc.keep([MemoryItem(text=original, session="s1", tenant="t-k", turn=3, role="tool", kind="tool_result",
                                    source_id=mid)], searchable=False) == [mid]
        assert svc.flush_kept(60) and written == []
    finally:
        rp.close()


def test_an_original_kept_by_one_tenant_is_still_kept_and_taken_for_another(tmp_path):
    """A memory id is the text's (the same for every tenant): a tenant that keeps a text another tenant kept
    moments before still gets its own original, recalled by the id within its own tenant, and its stub's
    hand-in of that text is still taken; only the same tenant's hand-in is left out."""
    from contextwarden.memory.ids import memory_id

    rp = replayer(tmp_path)
    try:
        svc = get_service(rp.runtime)
        original = "\n".join(f"def loader_{i}(path):  # numbat_{i} reads the cache table" for i in range(200))
        mid = memory_id(original)
        for tenant in ("t-a", "t-b"):
            assert svc.keep([MemoryItem(text=original, session="s1", tenant=tenant, turn=3, role="tool",
                                        kind="tool_result", source_id=mid)], searchable=False) == [mid]
        assert svc.flush_kept(60)
        assert [it.text for it in svc.recall([mid], ["t-b"])] == [original]
        before = svc.ingestor.stats["submitted"]
        assert svc.submit([MemoryItem(text=original, session="s1", tenant="t-c", turn=3, role="tool",
                                      kind="tool_result", source_id=mid)])
        assert svc.submit([MemoryItem(text=original, session="s1", tenant="t-b", turn=3, role="tool",
                                      kind="tool_result", source_id=mid)])
        assert svc.flush(120)
        assert svc.ingestor.stats["submitted"] - before == 1  # t-c's (no original kept for it); t-b's left out
    finally:
        rp.close()
