"""Compression's first-sight work in a worker process (compress/offload.py): the same text, byte for byte,
as in the stage's thread; a worker that dies or has no answer in time leaves the result uncompressed (no
fall-back) and the session's earlier decisions stay; the next request starts a new worker."""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path

import pytest

from contextwarden.compress import Limits, offload
from contextwarden.core import workerpool
from contextwarden.memory.ids import memory_id
from contextwarden.models.base import ApiKind
from tests.plugins.test_compression import anthropic_body, harness, next_body, results_of
from tests.support import tool_outputs as T
from tests.support.inworker import imported
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[3]


def outputs() -> list[tuple[str, str, dict, str]]:
    """(name, tool, input, text): every compressor's kind, the clean-up tier, one left whole, source code."""
    code = "\n".join(p.read_text() for p in sorted((ROOT / "src" / "contextwarden" / "compress").glob("*.py")))
    secret = "deploy log\n" + "\n".join(f"step {i}: ok" for i in range(400)) + \
        "\nexport AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\nERROR: upload failed\n"
    return [("pytest", "Bash", {"command": "pytest -v"}, T.failing_pytest()[0]),
            ("build", "Bash", {"command": "make -j8 TOKEN=sk-ant-api03-" + "x" * 40}, T.build_log()[0]),
            ("cargo", "Bash", {"command": "cargo build"}, T.cargo_build()[0]),
            ("json", "WebFetch", {"url": "https://api.example.com/items"}, T.api_json()[0]),
            ("grep", "Grep", {"pattern": "TODO"}, T.recursive_grep()[0]),
            ("docs", "WebFetch", {"url": "https://docs.example.com"}, T.docs_page()),
            ("medium", "Bash", {"command": "npm install"}, "\x1b[32mok\x1b[0m\n" * 300 + "done\n"),
            ("small", "Bash", {"command": "ls"}, "a.txt\n"),
            ("code", "Bash", {"command": "cat compress/*.py"}, code[:12_000]),
            ("code2", "Bash", {"command": "cat compress/*.py"}, code[12_000:60_000]),
            ("secret", "Bash", {"command": "./deploy.sh"}, secret)]


def test_a_worker_gives_the_same_text_as_the_stage_thread_byte_for_byte():
    pool = offload.Offload(1)
    try:
        assert pool.wait_ready(60)
        query = "The build fails: find out why and fix it."
        for name, tool, inp, text in outputs():
            args = (text, tool, inp, query, Limits(), memory_id(text), "mcp__contextwarden__recall")
            here = offload.first_sight(*args)
            there = pool.call(offload.first_sight, *args, timeout=60)
            assert there == here, name  # the text and the compressor (or None: left whole)
        assert pool.started == 1 and pool.failures == 0
    finally:
        pool.close()


def test_a_worker_imports_what_it_serves_before_it_says_it_is_ready():
    """The compression stage's workers import ``compress.offload`` as they start: that import took each worker's
    first call past the stage's 200 ms (its first results went whole, and the TUI showed an error)."""
    pools = [offload.Offload(1, preload=(offload.__name__,)), offload.Offload(1)]
    try:
        assert all(p.wait_ready(60) for p in pools)
        assert [p.call(imported, offload.__name__, timeout=60) for p in pools] == [True, False]
    finally:
        for p in pools:
            p.close()


def test_a_worker_holds_the_compressors_and_nothing_else():
    """Each worker's memory at rest is what it loads: the compressors and numpy; not a tiktoken encoding (the
    stage counts the compressed text), memory's index, store and models, the request models (pydantic) or
    the sealing (cryptography): 68 MB a worker with them, 19 MB without (docs/benchmarks.md)."""
    pool = offload.Offload(1, preload=(offload.__name__,))
    try:
        assert pool.wait_ready(60)
        got = pool.call(offload.first_sight, T.build_log()[0], "Bash", {"command": "make"}, "why does it fail?",
                        Limits(), "m-1", "mcp__contextwarden__recall", timeout=60)
        assert got is not None and got[1]  # it compressed (every module its work needs is loaded)
        heavy = ("contextwarden.memory.service", "contextwarden.memory.lexical", "contextwarden.memory.store",
                 "contextwarden.models", "pydantic", "cryptography", "rapidfuzz", "chromadb", "onnxruntime", "tiktoken")
        assert [m for m in heavy if pool.call(imported, m, timeout=60)] == []
    finally:
        pool.close()


def test_the_stages_workers_are_started_with_what_they_serve(cw_home):
    h, pool = separate(cw_home)
    assert pool.call(imported, offload.__name__, timeout=60) is True
    h.close()


def test_a_late_worker_is_left_to_finish_and_only_a_hung_one_is_started_again(monkeypatch):
    pool = offload.Offload(1)
    try:
        with pytest.raises(offload.Unavailable, match="starting"):
            pool.call(len, "abc", timeout=60)  # a call does not wait for a worker to start: it would be charged
        assert pool.wait_ready(60)
        assert pool.call(len, "abc", timeout=60) == 3
        with pytest.raises(offload.Unavailable, match="no answer"):
            pool.call(time.sleep, 3, timeout=0.2)  # late (a busy machine), not hung: left to finish
        with pytest.raises(offload.Unavailable, match="still busy"):
            pool.call(len, "x", timeout=0.1)  # its late answer not there yet: no longer a wait than the call's own
        assert pool.call(len, "abcd", timeout=60) == 4  # the late answer read and dropped first, then this one's
        assert pool.failures == 0 and pool.started == 1  # no restart: a new interpreter's start-up is not paid

        monkeypatch.setattr(workerpool, "HUNG_S", 0.5)
        with pytest.raises(offload.Unavailable, match="no answer"):
            pool.call(time.sleep, 60, timeout=0.2)
        time.sleep(0.6)  # the behaviour under test: HUNG_S passing (offload reads the monotonic clock)
        with pytest.raises(offload.Unavailable, match="stopped"):
            pool.call(len, "x", timeout=0.2)  # no answer for HUNG_S: stopped
        assert pool.failures == 1
        assert pool.wait_ready(60)
        assert pool.call(len, "abcd", timeout=60) == 4  # a new worker (the hung one was stopped, not waited for)
        assert pool.started == 2
        with pytest.raises(offload.Unavailable, match="ValueError"):
            pool.call(int, "x", timeout=60)  # a call that raises there: the caller leaves the result whole
        assert pool.call(len, "ab", timeout=60) == 2 and pool.failures == 1  # and the worker goes on
    finally:
        pool.close()
    with pytest.raises(offload.Unavailable):
        pool.call(len, "x", timeout=1)  # closed


def test_an_answer_of_any_size_is_read_whole_and_the_wait_is_told_in_parts():
    """The answer is read as the pipe holds it (not its length, then the rest): one larger than the pipe
    comes whole, the next call's answer is its own; ``timings`` gets where each call's wait went."""
    pool = offload.Offload(1)
    try:
        assert pool.wait_ready(60)
        big = "x" * 300_000 + "é"  # several pipe-fulls
        timings: dict[str, float] = {}
        assert pool.call(str.upper, big, timeout=60, timings=timings) == big.upper()
        assert pool.call(len, "abc", timeout=60, timings=timings) == 3
        assert pool.call(str.upper, "", timeout=60) == ""  # (an empty value: a short answer)
        assert set(timings) == set(offload.PARTS) and all(v >= 0 for v in timings.values())
        assert sum(timings.values()) > 0
        assert pool.failures == 0 and pool.started == 1
    finally:
        pool.close()


def _held(pool: offload.Offload) -> int:
    """How many workers a call holds."""
    return sum(w.lock.locked() for w in pool.workers)


def test_a_call_takes_whichever_worker_is_free_first():
    """With one worker busy, a call goes to the other at once rather than queueing behind the busy one
    (each gets the next in turn otherwise); with both busy it waits for the first to be free."""
    pool = offload.Offload(2)
    try:
        assert pool.wait_ready(60)
        for _ in range(2):  # whichever was used last, the other is busy next
            busy = threading.Thread(target=lambda: pool.call(time.sleep, 1.5, timeout=30), daemon=True)
            busy.start()
            assert wait_until(lambda: _held(pool) == 1)
            assert pool.call(len, "abc", timeout=5) == 3
            assert busy.is_alive()  # not behind the sleeping one: answered while it sleeps
            busy.join()
        both = [threading.Thread(target=lambda: pool.call(time.sleep, 1.0, timeout=30), daemon=True) for _ in range(2)]
        for t in both:
            t.start()
        assert wait_until(lambda: _held(pool) == 2)
        assert pool.call(len, "ab", timeout=5) == 2  # both were held: it waited for one of them
        for t in both:
            t.join()
        with pytest.raises(offload.Unavailable, match="every worker busy"):
            both = [threading.Thread(target=lambda: pool.call(time.sleep, 1.0, timeout=30), daemon=True) for _ in range(2)]
            for t in both:
                t.start()
            assert wait_until(lambda: _held(pool) == 2)
            pool.call(len, "a", timeout=0.2)
        for t in both:
            t.join()
        assert pool.failures == 0 and pool.started == 2
    finally:
        pool.close()


def _kill_workers(pool: offload.Offload) -> None:
    import os
    import signal

    for pid in pool.pids():
        os.kill(pid, signal.SIGKILL)
    for w in pool.workers:
        w.proc.wait(10)


def separate(cw_home, **cfg):
    """A harness whose compression runs in worker processes (one unless ``workers`` says otherwise: the
    tests of a dead or busy worker are about the only one)."""
    h = harness(cw_home, process="separate", **{"workers": 1, **cfg})
    pool = h.rt.memo(offload.NAME, lambda: None)
    assert pool is not None
    # started with the runtime; if not ready, say whether the worker lives (once seen beside two CPU-bound loops)
    assert pool.wait_ready(60), [(w.proc and w.proc.pid, w.proc and w.proc.poll(), pool.started, pool.failures)
                                 for w in pool.workers]
    return h, pool


def step(body: dict, tid: str, text: str) -> dict:
    """The next request of the tool loop: the model calls Bash again and ``text`` is its result."""
    b = copy.deepcopy(body)
    for blk in b["messages"][-1]["content"]:
        blk.pop("cache_control", None)
    b["messages"].append({"role": "assistant", "content": [{"type": "text", "text": "Next."}, {
        "type": "tool_use", "id": tid, "name": "Bash", "input": {"command": f"run {tid}"}}]})
    b["messages"].append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": tid, "content": text,
                                                       "cache_control": {"type": "ephemeral"}}]})
    return b


def test_the_stage_with_a_worker_sends_the_same_bodies_and_events_as_in_line(tmp_path):
    log, _ = T.build_log()
    grep, _ = T.recursive_grep()
    body = anthropic_body([("Bash", {"command": "make -j8"}, log, False), ("Grep", {"pattern": "TODO"}, grep, False),
                           ("Bash", {"command": "echo hi"}, "ok\n" * 10, False)])
    seen = {}
    for mode in ("inline", "separate"):
        h = harness(tmp_path / mode, process=mode)
        if mode == "separate":
            assert h.rt.memo(offload.NAME, lambda: None).wait_ready(60)
        try:
            sent = [h.send(ApiKind.ANTHROPIC, b) for b in (body, next_body(body), body)]
            seen[mode] = ([s.body for s in sent],
                          [{k: v for k, v in e.items() if k not in ("ts", "seq", "flow_id")}
                           for s in sent for e in s.events("compression")],
                          [s.outcome.fallback for s in sent])
            if mode == "separate":
                pool = h.rt.memo(offload.NAME, lambda: None)
                assert pool is not None and pool.started == len(pool.workers) == 2 and pool.failures == 0  # it ran there
        finally:
            h.close()
    assert seen["separate"] == seen["inline"]
    assert seen["inline"][1][0]["compressed"] == 2 and seen["inline"][2] == [None, None, None]


def test_a_dead_worker_leaves_the_new_result_whole_and_the_sessions_decisions_stay(cw_home):
    h, _ = separate(cw_home)
    try:
        log, _ = T.build_log()
        body = anthropic_body([("Bash", {"command": "make -j8"}, log, False)], session="off-1")
        first = h.send(ApiKind.ANTHROPIC, body)
        stub = results_of(first.body)["toolu_0"]["content"]
        assert stub != log
        pool = h.rt.memo(offload.NAME, lambda: None)
        _kill_workers(pool)
        # the next step brings a new large result while the worker is dead
        out2, out3 = T.failing_pytest()[0], T.cargo_build()[0]
        nxt = step(body, "toolu_a", out2)
        second = h.send(ApiKind.ANTHROPIC, nxt)
        res = results_of(second.body)
        assert res["toolu_0"]["content"] == stub  # the earlier decision, byte for byte
        assert res["toolu_a"]["content"] == out2  # the new result whole: not compressed ...
        assert second.outcome.fallback is None  # ... and no fall-back: the other stages' work went
        [err] = [e for e in second.events("error") if e["where"] == "compression"]
        assert err["action"] == "not compressed" and "worker" in err["message"]
        assert pool.wait_ready(60)
        # it stays whole on later requests (no record was made), and a new worker compresses the next one
        third = h.send(ApiKind.ANTHROPIC, step(nxt, "toolu_b", out3))
        res = results_of(third.body)
        assert third.outcome.fallback is None
        assert res["toolu_0"]["content"] == stub and res["toolu_a"]["content"] == out2
        assert res["toolu_b"]["content"] != out3 and memory_id(out3) in res["toolu_b"]["content"]
        assert pool.started == 2
    finally:
        h.close()
    assert not pool.pids()  # stopped with the runtime


def test_a_busy_worker_past_the_stages_budget_leaves_the_result_whole_without_a_fall_back(cw_home):
    h, _ = separate(cw_home)
    try:
        h.apply({"pipeline": {"budgets_ms": {"compression": 1500}}})  # the worker has until 1.2 s
        pool = h.rt.memo(offload.NAME, lambda: None)
        busy = threading.Thread(target=lambda: pool.call(time.sleep, 6, timeout=30), daemon=True)
        busy.start()
        assert wait_until(lambda: _held(pool) == 1)  # the worker is asleep: the stage's call waits behind it
        log, _ = T.build_log()
        body = anthropic_body([("Bash", {"command": "make -j8"}, log, False)], session="off-2")
        sent = h.send(ApiKind.ANTHROPIC, body)
        assert results_of(sent.body)["toolu_0"]["content"] == log
        assert sent.outcome.fallback is None
        assert any(e["where"] == "compression" and "no answer" in e["message"] for e in sent.events("error"))
        busy.join(30)
        assert pool.failures == 0  # a call still waiting is withdrawn; the busy worker is not stopped for it
    finally:
        h.close()
