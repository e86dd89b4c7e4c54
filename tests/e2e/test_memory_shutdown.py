"""A real mitmdump with memory in its own process: SIGTERM right after a burst of ingestion exits in
seconds (not after embedding the whole burst), the memory process goes with it, and what was left
pending is stored at the next start."""

from __future__ import annotations

import os
import signal
import sqlite3
import uuid

import httpx

from tests.support.proxy import ProxyProcess
from tests.support.upstream import StandIn
from tests.support.wait import wait_until

ENV = {"CONTEXTWARDEN_MEMORY__SHUTDOWN_FLUSH_S": "1", "CONTEXTWARDEN_MEMORY__INGEST_BATCH": "16",
       "CONTEXTWARDEN_COMPRESSION__ENABLED": "false"}  # (no tool results: no compression workers to start)


def _pending(home) -> int:
    p = home / "memory-pending.sqlite"
    if not p.exists():
        return -1
    db = sqlite3.connect(str(p))
    try:
        return int(db.execute("SELECT COALESCE(SUM(n), 0) FROM pending").fetchone()[0])
    finally:
        db.close()


def _history(k: int, n: int) -> list[dict]:
    msgs = []
    for i in range(n):
        role = "user" if i % 2 == 0 else "assistant"
        msgs.append({"role": role, "content": f"conversation {k} message {i}: the invoice batch {k}-{i} for "
                                              f"warehouse {uuid.uuid4().hex[:8]} ships on pallet {i * 7 + k}"})
    return msgs


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_sigterm_after_a_burst_of_ingestion_is_quick_and_the_rest_is_stored_at_the_next_start(tmp_path):
    with StandIn() as standin:
        proxy = ProxyProcess(tmp_path / "p", profile="claude-code", reverse=standin.url, env=ENV,
                             ready_events=("startup", "memory_process"), startup_timeout=300)
        proxy.start()
        try:
            pid = proxy.events("memory_process", wait=5)[0]["data"]["pid"]
            assert pid != proxy.proc.pid and _alive(pid)
            with httpx.Client(timeout=60) as c:
                for k in range(6):
                    r = c.post(proxy.url + "/v1/messages",
                               headers={"x-api-key": f"sk-ant-shutdown-{k}", "anthropic-version": "2023-06-01",
                                        "x-contextwarden-session": f"burst-{k}"},
                               json={"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": _history(k, 61)})
                    assert r.status_code == 200
            # every turn reached the memory process's pending table (stored, not yet all embedded)
            assert proxy.wait_events(lambda e: e["type"] == "turn", 6, timeout=60)
            wait_until(lambda: _pending(proxy.home) > 0, 30, interval=0.1)
            proxy.proc.send_signal(signal.SIGTERM)
            code = proxy.wait_stopped(30)  # (killed past 30 s)
        finally:
            proxy.stop()
        assert code is not None and code != -signal.SIGKILL, code  # it exited on SIGTERM, not killed
        assert proxy.events("shutdown", wait=0)
        assert wait_until(lambda: not _alive(pid), 10, interval=0.1)
        left = _pending(proxy.home)
        assert left > 0, "the burst was all stored before the shutdown: nothing left to recover"

        # (the rest embedded in the ingestion thread, niced, not at idle priority: the suite's other workers
        # would hold it back for a minute)
        again = ProxyProcess(tmp_path / "p", profile="claude-code", reverse=standin.url, name="again",
                             env={**ENV, "CONTEXTWARDEN_MEMORY__EMBED_IDLE": "false"},
                             ready_events=("startup", "memory_process"), startup_timeout=300)
        mark = len(again._read_events())
        again.start()
        try:
            recovered = again.wait_events(lambda e: e["type"] == "memory" and e["data"].get("recovered"),
                                          since=mark, timeout=60)
            assert recovered and recovered[0]["data"]["recovered"] == left
            assert wait_until(lambda: _pending(again.home) == 0, 600, interval=0.1)

            def ingested() -> int:  # (a batch's event reaches the log a moment after its rows leave the table)
                return sum(e["data"]["items"] for e in again.events("memory", since=mark, wait=0) if "ingested" in e["data"])

            assert wait_until(lambda: ingested() >= left, 60), (ingested(), left)
        finally:
            again.stop()
