"""The turn pool's queue is bounded: the oldest waiting work is dropped and counted, never blocks."""

import asyncio
import threading

from contextwarden.core.boundedpool import BoundedExecutor
from tests.support.wait import wait_until


def test_oldest_waiting_work_is_dropped_past_the_bound():
    gate = threading.Event()
    drops = []
    pool = BoundedExecutor(1, 3, on_drop=lambda d, w: drops.append((d, w)))
    running = pool.submit(gate.wait)
    while pool.pending:  # the worker has taken the first task
        pass
    futs = [pool.submit(lambda i=i: i) for i in range(6)]
    assert [f.cancelled() for f in futs] == [True, True, True, False, False, False]
    assert pool.dropped == 3 and drops[-1] == (3, 3)
    gate.set()
    assert [f.result(10) for f in futs[3:]] == [3, 4, 5]
    assert running.result(10) is True
    pool.shutdown()


def test_shutdown_waits_a_bounded_time_and_cancels_what_still_waits():
    gate = threading.Event()
    pool = BoundedExecutor(1, 10)
    pool.submit(gate.wait)
    later = pool.submit(lambda: 1)
    pool.shutdown(wait=True, timeout=0.2)
    assert later.cancelled()
    gate.set()


def test_asyncio_run_in_executor_works_with_it():
    pool = BoundedExecutor(2, 4)

    async def main():
        return await asyncio.get_running_loop().run_in_executor(pool, lambda: 42)

    assert asyncio.run(main()) == 42
    pool.shutdown()


def test_a_waiting_worker_lets_go_of_its_last_task():
    """A worker waiting for work holds nothing of the task it ran last (a turn's whole parsed request)."""
    import weakref

    class Request:
        pass

    pool = BoundedExecutor(1, 4)
    try:
        req = Request()
        gone = weakref.ref(req)
        pool.submit(lambda r: None, req).result(timeout=5)
        del req
        assert wait_until(lambda: gone() is None, 5, interval=0.01)
    finally:
        pool.shutdown()
