"""Stages under load (issue 19): one trip to a worker thread per request, budgets that measure the
stage's own work (not the time queued for a thread, nor waiting while other threads compute)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from contextwarden import hookimpl
from contextwarden.core.runtime import Runtime
from contextwarden.core.stagebudgets import Budget
from contextwarden.request.stageclock import StageClock
from tests.contextwarden.request.test_breaker import _send
from tests.support.stages import stage_runtime

BUDGET_MS = 200


class Recorder:
    """Notes the thread each call runs on."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    @hookimpl
    def cw_request(self, ctx) -> None:
        self.threads.append(threading.get_ident())


def _runtime(tmp_path, stages: dict) -> Runtime:
    return stage_runtime(tmp_path / "home", list(stages.items()), stage_budget_ms=BUDGET_MS, adaptive_budgets=False)


def _stages(events) -> list[tuple[str, str]]:
    return [(e.data["stage"], e.data["status"]) for e in events if e.type == "stage"]


def test_every_stage_of_a_request_runs_on_one_thread(tmp_path):
    a, b = Recorder(), Recorder()
    rt = _runtime(tmp_path, {"a": a, "b": b})
    try:
        for n in range(3):
            outcome, _, events, _ = _send(rt, n)
            assert outcome.fallback is None
            assert _stages(events) == [("a", "ok"), ("b", "ok")]
            assert a.threads[-1] == b.threads[-1]  # one trip to the pool, not one per stage
    finally:
        rt.close()


def test_time_queued_for_a_worker_thread_is_not_a_stage_overrun(tmp_path):
    """Every worker of the stage pool busy for several budgets (other sessions' slow work): the request
    waits for a thread, and its stages, quick once they run, keep their work (no fall-back)."""
    a = Recorder()
    rt = _runtime(tmp_path, {"a": a})
    gate = threading.Event()
    started = threading.Semaphore(0)

    def busy():
        started.release()
        gate.wait(60)

    workers = rt.stage_pool._max_workers
    try:
        for _ in range(workers):
            rt.stage_pool.submit(busy)
        for _ in range(workers):
            assert started.acquire(timeout=60)
        threading.Timer(5 * BUDGET_MS / 1000, gate.set).start()  # released well past the budget
        outcome, _, events, _ = _send(rt, 1)
        assert gate.is_set()  # the request did wait for a thread
        assert outcome.fallback is None, outcome
        assert _stages(events) == [("a", "ok")]
        assert not [e for e in events if e.type == "error"]
    finally:
        gate.set()
        rt.close()


def _watch(clock: StageClock, work):
    return asyncio.run(clock.watch(work))


def _run_stage(clock: StageClock, budget_ms: float, body) -> str:
    clock.begin("s", Budget(budget_ms, budget_ms))
    try:
        body()
    finally:
        ok = clock.end()
    return "returned" if ok else "abandoned"


def test_a_stage_that_waits_is_given_time_and_one_that_works_past_its_budget_is_abandoned():
    pool = ThreadPoolExecutor(2)
    try:
        # waiting (sleep: no CPU) past its budget, well under the wall-clock limit: its result stands
        clock = StageClock(wall_factor=50)
        work = pool.submit(_run_stage, clock, 100, lambda: time.sleep(0.25))
        assert _watch(clock, work) == "returned"
        assert clock.abandoned is None

        # computing past its budget: abandoned (the CPU it used, not only the clock, says it worked)
        stop = threading.Event()

        def spin():
            while not stop.is_set():
                sum(range(1000))

        clock = StageClock(wall_factor=1000)
        work = pool.submit(_run_stage, clock, 50, spin)
        assert _watch(clock, work) is None
        assert clock.abandoned == "s"
        stop.set()
        assert work.result(30) == "abandoned"  # it learns so when it returns: nothing more runs there
        assert clock.returned.done()  # what the breaker waits for

        # waiting past the wall-clock limit (a hang on I/O): abandoned too
        gate = threading.Event()
        clock = StageClock(wall_factor=2)
        work = pool.submit(_run_stage, clock, 50, lambda: gate.wait(30))
        assert _watch(clock, work) is None and clock.abandoned == "s"
        gate.set()
        assert work.result(30) == "abandoned"
    finally:
        pool.shutdown(wait=True)


def test_queued_work_is_never_abandoned():
    """No stage has begun (the call waits for a thread): nothing to abandon, however long it waits."""
    pool = ThreadPoolExecutor(1)
    gate = threading.Event()
    try:
        pool.submit(gate.wait, 30)
        clock = StageClock(wall_factor=1)
        work = pool.submit(_run_stage, clock, 10, lambda: None)
        threading.Timer(0.6, gate.set).start()
        assert _watch(clock, work) == "returned"
    finally:
        gate.set()
        pool.shutdown(wait=True)


def test_the_end_of_the_call_reaches_the_loop_in_two_turns():
    """Under load a turn of the event loop is tens of ms: the call's end wakes the watching task in two
    turns (the stage thread's callback, then the task), not three (asyncio.wait on a wrapped future)."""
    from concurrent.futures import Future

    async def main():
        loop = asyncio.get_running_loop()
        turns = [0]

        def tick():
            turns[0] += 1
            loop.call_soon(tick)

        loop.call_soon(tick)
        clock = StageClock()
        work: Future = Future()

        async def watched():
            got = await clock.watch(work)
            return got, turns[0]

        task = asyncio.ensure_future(watched())
        for _ in range(5):
            await asyncio.sleep(0)  # the watch is waiting
        at = turns[0]
        work.set_result("returned")  # (as the stage thread does: the future's callbacks run here)
        got, back = await task
        return got, back - at

    got, turns = asyncio.run(main())
    assert got == "returned" and turns <= 2
