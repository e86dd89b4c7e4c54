"""What a request's stage thread is doing now, for the event loop's watchdog
(``Pipeline.admit_and_process``): the thread stamps each stage's start; the loop sleeps until the
running stage's budget is due and abandons it only if it is still running then.

A budget measures the stage's own work from its own start. Past its budget in wall-clock time, a stage
is abandoned when its thread has also used its budget's worth of CPU (working, not waiting for the
interpreter lock), or once it has run ``WALL_FACTOR`` times its budget whatever it did.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from contextlib import suppress
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..core.stagebudgets import Budget
    from .context import RequestContext

WALL_FACTOR = 3.0  # past this many times its budget in wall-clock time, a stage is abandoned anyway
IDLE_WAIT_S = 0.25  # how often the watchdog looks while no stage runs (queued, or finishing: no budget)


def _cpu_clock(tid: int):
    """A function giving the CPU seconds thread ``tid`` has used, or None where the OS cannot tell."""
    try:
        cid = time.pthread_getcpuclockid(tid)
        time.clock_gettime(cid)
    except (AttributeError, OSError, ValueError):
        return None
    return lambda: time.clock_gettime(cid)


class StageClock:
    """Shared between a request's stage thread (:meth:`begin`, :meth:`end`) and the event loop
    (:meth:`watch`). Thread-safe."""

    def __init__(self, wall_factor: float = WALL_FACTOR) -> None:
        self._lock = threading.Lock()
        self.wall_factor = wall_factor
        self.thread: int | None = None
        self._cpu = None
        self.name: str | None = None
        self.started = 0.0  # perf_counter at the running stage's start
        self.cpu_started = 0.0
        self.budget: Budget | None = None  # the running stage's Budget
        self.budget_s = 0.0
        self.abandoned: str | None = None  # the stage the loop gave up on
        self.abandoned_ms = 0.0
        self.returned: Future[Any] = Future()  # resolves when the abandoned stage's call returns
        self.t_stages = 0.0  # perf_counter when the stages started
        self.ctx: RequestContext | None = None  # the request's context, once the stage thread has it (Pipeline.admit_and_process)
        self.t_done = 0.0  # perf_counter when the stage thread's work for the request ended

    # --- the stage thread ------------------------------------------------------------------------
    def begin(self, name: str, budget) -> float:
        """A stage starts on this thread now, under ``budget`` (a stagebudgets.Budget); returns its
        start, a perf_counter time."""
        tid = threading.get_ident()
        if self.thread != tid:
            self.thread, self._cpu = tid, _cpu_clock(tid)
        cpu = time.thread_time()
        with self._lock:
            self.name, self.budget, self.budget_s, self.cpu_started = name, budget, budget.seconds, cpu
            self.started = time.perf_counter()
            return self.started

    def end(self, error: BaseException | None = None) -> bool:
        """The running stage returned. False when the loop abandoned it meanwhile (then nothing more
        of this request is done on this thread: the loop went on without it)."""
        with self._lock:
            self.name = None
            gone = self.abandoned is not None
        if gone and not self.returned.done():
            if error is not None:
                self.returned.set_exception(error)
            else:
                self.returned.set_result(None)
        return not gone

    # --- the event loop --------------------------------------------------------------------------
    def _due_locked(self) -> float | None:
        """Seconds until the running stage may be abandoned (<= 0: now), None when no stage runs."""
        if self.name is None:
            return None
        wall = time.perf_counter() - self.started
        left = self.budget_s - wall
        if left > 0:
            return left
        hard = self.budget_s * self.wall_factor - wall
        if self._cpu is None or hard <= 0:
            return 0.0
        try:
            used = self._cpu() - self.cpu_started
        except OSError:  # the thread is gone
            return 0.0
        if used >= self.budget_s:
            return 0.0
        # not working enough to have used its budget yet: look again when it could have
        return min(hard, max(0.005, self.budget_s - used))

    def _due(self) -> float | None:
        with self._lock:
            return self._due_locked()

    def _abandon(self) -> str | None:
        """Give up on the running stage if it is due (under the lock: it cannot return meanwhile)."""
        with self._lock:
            due = self._due_locked()
            if due is None or due > 0:
                return None
            self.abandoned = self.name
            self.abandoned_ms = (time.perf_counter() - self.started) * 1000
            return self.name

    async def watch(self, work: Future):
        """The result of ``work`` (the stage thread's call), or None when a stage was abandoned
        (``self.abandoned`` names it; ``work`` is left to finish on its own). The call's end wakes this
        task directly (:func:`_finished`): one turn of the event loop fewer than ``asyncio.wait``."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        waiting: list = [None]  # the task's current wait (a loop future), woken by _finished

        def settle(w: Future) -> None:  # (on the thread that ended the call, or here if it had)
            with suppress(RuntimeError):  # the loop is closed (shutdown): nobody waits any more
                loop.call_soon_threadsafe(_finished, w, done, waiting)

        work.add_done_callback(settle)
        while True:
            if done.done():
                return done.result()
            due = self._due()
            wait = IDLE_WAIT_S if due is None else max(0.0, due)
            if wait > 0:
                waiter = waiting[0] = loop.create_future()
                timer = loop.call_later(wait, _wake, waiter)
                try:
                    await waiter
                except asyncio.CancelledError:  # (the request's task is cancelled: the call goes on alone)
                    done.add_done_callback(_quiet)
                    raise
                finally:
                    timer.cancel()
                    waiting[0] = None
                if done.done():
                    return done.result()
            if self._abandon() is not None:
                done.add_done_callback(_quiet)
                return None


def _finished(work: Future, done: asyncio.Future, waiting: list) -> None:
    """On the loop: ``work``'s outcome into ``done``, and the task waiting on it woken."""
    if not done.done():
        if work.cancelled():
            done.cancel()
        elif (e := work.exception()) is not None:
            done.set_exception(e)
        else:
            done.set_result(work.result())
    _wake(waiting[0])


def _wake(waiter: asyncio.Future | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _quiet(f) -> None:
    """Retrieve an abandoned call's exception (no 'never retrieved' warning)."""
    if not f.cancelled():
        f.exception()
