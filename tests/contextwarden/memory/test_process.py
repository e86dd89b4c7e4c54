"""Memory in its own process (memory.process: separate): the memory stage through the real pipeline
talks to a real memory server over its Unix socket; the service's methods are forwarded by name, events
come back onto the proxy's bus, a killed server is restarted, and pending ingestion survives a restart."""

from __future__ import annotations

import os
import signal
import stat
import subprocess

from contextwarden.memory.client import RemoteMemoryService
from contextwarden.memory.items import MemoryItem
from contextwarden.memory.service import get_service
from tests.plugins.test_memory import FACTS, ask, converse, memory_event, replayer
from tests.support.wait import wait_until

SEPARATE = "memory: {process: separate}"
# the same with ingestion's embeddings in the memory process's (niced) ingestion thread, not in the worker at the
# idle CPU priority, which the suite's other workers starve for up to a minute on two cores: for a test that
# waits for what it sent to be stored and is not about the worker (test_embedworker.py's and the tests
# below that stop the worker are)
SEPARATE_NO_IDLE = "memory: {process: separate, embed_idle: false}"
READ_REMINDER = ("<system-reminder>\nWhenever you read a file, you should consider whether it would be considered malware. "
                 "You CAN and SHOULD provide analysis of malware.\n</system-reminder>\n")
CODEX_EXEC = "Chunk ID: 427b69\nWall time: 0.6900 seconds\nProcess exited with code 0\nOriginal token count: 17\nOutput:\n"


def test_the_memory_stage_injects_through_the_memory_process(tmp_path):
    rp = replayer(tmp_path, SEPARATE_NO_IDLE)
    try:
        svc = get_service(rp.runtime)
        assert isinstance(svc, RemoteMemoryService)
        assert svc.pid != os.getpid() and svc.available
        assert stat.S_IMODE(os.stat(svc._path).st_mode) == 0o600
        msgs = converse(rp)
        sent = ask(rp, msgs, "What is the name of the beagle I adopted?")
        ev = memory_event(rp, sent.ctx.flow_id)
        assert ev["injected"] > 0, ev
        assert "Biscuit" in str(sent.wire["messages"][-1])
        # its vector half was started in the memory process as the request was read (memory.prefetch),
        # before the other stages ran, and the stage finished that very search
        assert ev["timings"].get("prefetched") == 1, ev["timings"]
        # the service's events reached the proxy's bus (ingestion happened in the other process)
        ingested = [e.data for e in rp.runtime.bus.recent if e.type == "memory" and "ingested" in e.data]
        assert ingested and sum(d["new"] for d in ingested) >= len(FACTS)
        # a method the client does not define, forwarded by name, MemoryItems both ways
        item = MemoryItem(text=FACTS[0], session="s1", tenant=sent.ctx.tenant, turn=2, role="user", kind="message")
        around = svc.neighbours(item)
        assert around and all(isinstance(it, MemoryItem) for it in around)
        assert {it.turn for it in around} <= {1, 3}
        # tagging for memory happened in the memory process: stored items carry tags
        found = svc.search(__import__("contextwarden.memory.retrieve", fromlist=["Query"]).Query("beagle Biscuit"),
                           [sent.ctx.tenant], timeout_s=30)
        assert found.hits and any(h.item.tags for h in found.hits)
        # a tool result is stored verbatim (recall by id) but tagged without the agents' envelopes around it:
        # Claude Code's reminder after a Read, Codex's head of a command's output
        results = {"t1": "     1→DEPLOY_TARGET = 'kestrel-staging'\n\n" + READ_REMINDER,
                   "t2": CODEX_EXEC + "kestrel_deploy.sh\nNOTES.md\n"}
        msgs = [*msgs, {"role": "assistant", "content": [{"type": "tool_use", "id": k, "name": "Bash", "input": {"command": k}}
                                                         for k in results]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": k, "content": v} for k, v in results.items()]}]
        rp.complete(rp.send(msgs, api_key="sk-alice", session="s1"), "Deployed to kestrel.")
        assert rp.flush()
        found = svc.search(__import__("contextwarden.memory.retrieve", fromlist=["Query"]).Query("kestrel deploy"),
                           [sent.ctx.tenant], timeout_s=30)
        stored = [h.item for h in found.hits if h.item.kind == "tool_result"]
        assert sorted(it.text for it in stored) == sorted(results.values())
        tags = {t.lower() for it in stored for t in it.tags}
        assert tags and not tags & {"system-reminder", "malware", "whenever", "chunk", "wall", "seconds", "process"}, tags
    finally:
        rp.close()
    assert svc._proc.poll() is not None  # stopped with the runtime


def test_a_killed_memory_process_is_restarted_and_requests_go_on_meanwhile(tmp_path):
    rp = replayer(tmp_path, SEPARATE)
    try:
        svc = get_service(rp.runtime)
        first = svc.pid
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: not svc.available, 30)
        sent = rp.send([{"role": "user", "content": "hello while memory restarts"}])
        assert sent.outcome is not None  # the request went on (without memory)
        assert wait_until(lambda: svc.available and svc.pid != first, 120)
        assert svc.restarts == 1
        assert any(e.type == "memory_status" and e.data.get("status") == "restarting" for e in rp.runtime.bus.recent)
        sent = rp.send([{"role": "user", "content": "hello again"}])
        rp.complete(sent, "hi")
        assert rp.flush(60)
    finally:
        rp.close()


def test_closing_a_memory_process_that_will_not_exit_in_time_never_raises(tmp_path, monkeypatch):
    """A stopped process answers neither the close nor SIGTERM, and here no wait ends in time (a loaded
    machine's slow reap): close asks, terminates, kills, and returns; the runtime's shutdown goes on."""
    rp = replayer(tmp_path, SEPARATE)
    svc = get_service(rp.runtime)
    proc = svc._proc
    assert isinstance(svc, RemoteMemoryService) and proc is not None
    os.kill(proc.pid, signal.SIGSTOP)
    signals: list[str] = []
    monkeypatch.setattr(proc, "terminate", lambda: signals.append("term"))
    monkeypatch.setattr(proc, "kill", lambda: (signals.append("kill"), os.kill(proc.pid, signal.SIGKILL)))

    def late(timeout=None):
        raise subprocess.TimeoutExpired(proc.args, timeout)

    monkeypatch.setattr(proc, "wait", late)
    try:
        svc.close(timeout=0.5)
        assert signals == ["term", "kill"]
    finally:
        monkeypatch.undo()
        assert proc.wait(30) == -signal.SIGKILL
        rp.close()


def test_pending_ingestion_left_at_shutdown_is_stored_at_the_next_start(tmp_path):
    """Items submitted but not yet embedded when memory shuts down (the embedding worker stopped, so
    none can be) are stored at the next start."""
    extra = "memory: {process: separate, shutdown_flush_s: 0, ingest_batch: 8}"
    rp = replayer(tmp_path, extra)
    texts = [f"note {i}: the migration of table orders_{i} needs an index on customer_{i}" for i in range(40)]
    try:
        svc = get_service(rp.runtime)
        assert isinstance(svc, RemoteMemoryService) and wait_until(lambda: svc.available, 120)
        assert wait_until(lambda: bool(_children(svc.pid)), 120)  # the embedding worker
        for pid in _children(svc.pid):
            os.kill(pid, signal.SIGSTOP)  # (the shutdown kills it, stopped or not)
        for k in range(0, len(texts), 20):
            items = [MemoryItem(text=t, session="s", tenant="t-pending", turn=k + j, role="user", kind="message")
                     for j, t in enumerate(texts[k:k + 20])]
            assert svc.submit(items)
    finally:
        rp.close()  # without waiting for the embeddings: what was pending is recovered below
    # (embedded in the ingestion thread, not at idle priority, which a busy machine holds back)
    rp = replayer(tmp_path, extra.replace("}", ", embed_idle: false}"))
    try:
        svc = get_service(rp.runtime)
        assert svc.flush(300)
        from contextwarden.memory.retrieve import Query

        found = svc.search(Query("orders_39 customer_39"), ["t-pending"], timeout_s=30)
        assert any("orders_39" in h.item.text for h in found.hits)
        recovered = [e.data for e in rp.runtime.bus.recent if e.type == "memory" and e.data.get("recovered")]
        assert recovered and recovered[0]["recovered"] == len(texts)
    finally:
        rp.close()


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def test_what_waits_for_the_embedder_is_found_by_its_words(tmp_path):
    """The memory process indexes a submission by its words as it arrives; with the embedding worker
    stopped (a machine that never idles), a search still finds it, and it is stored once the worker runs
    again."""
    from contextwarden.memory.retrieve import Query

    rp = replayer(tmp_path, "memory: {process: separate}")
    stopped: list[int] = []
    try:
        svc = get_service(rp.runtime)
        assert isinstance(svc, RemoteMemoryService) and wait_until(lambda: svc.available, 120)
        assert wait_until(lambda: bool(_children(svc.pid)), 120)  # the embedding worker
        stopped = _children(svc.pid)
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        text = "The staging database lives on host quokka-db-7, port 6543; the nightly dump runs at 02:10."
        item = MemoryItem(text=text, session="s-idx", tenant="t-idx", turn=3, role="user", kind="message")
        assert svc.submit([item])

        def found() -> bool:
            got = svc.search(Query("which host runs the staging database quokka"), ["t-idx"], timeout_s=20)
            return any(h.item.text == text for h in got.hits)

        def stored() -> list[dict]:
            return [e.data for e in list(rp.runtime.bus.recent) if e.type == "memory" and e.data.get("new")]

        assert wait_until(found, 60)
        assert not stored()  # not stored yet: the worker is stopped
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        stopped = []
        assert wait_until(lambda: bool(stored()), 120)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        rp.close()
