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
