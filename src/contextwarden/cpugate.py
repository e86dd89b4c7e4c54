"""At most ``pipeline.cpu_turns`` request threads run Python at once in the proxy; the others wait for
a turn, and a thread that waits on another process (the compression worker, the memory process) gives
its turn back meanwhile.

Why: a request's work in the proxy (parse, count, stages, validate, serialise) is Python under one
interpreter lock. Under load every core and stage thread is runnable at once, and the event loop, which
relays every byte of every stream and starts every request, has to win the lock against all of them
each time it wakes: time to first byte grew with the number of requests in flight (issue 19). With a
few turns, the event loop competes with a few threads, and a request that has its turn finishes
sooner instead of all of them advancing slowly together. A wait on another process holds no turn:
held across those waits, a single turn serialised requests behind each other's waits (44% of direct
throughput on the load benchmark).

Fails open: a thread that gets no turn within ``wait_s`` (turns held by stages that hang) runs
without one, so a stuck stage can slow the proxy, never stop it.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

_local = threading.local()  # .gate: the gate whose turn this thread holds now


class CpuGate:
    def __init__(self, turns: int, wait_s: float = 1.0) -> None:
        self.turns = max(0, int(turns))
        self.wait_s = wait_s
        self._sem = threading.Semaphore(self.turns) if self.turns else None
        self.unturned = 0  # threads that ran without a turn (none came within wait_s)

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Run the block holding a turn (at once when the gate is off or this thread holds one)."""
        if self._sem is None or getattr(_local, "gate", None) is not None:
            yield
            return
        if not self._sem.acquire(timeout=self.wait_s):
            self.unturned += 1
            yield
            return
        _local.gate = self
        try:
            yield
        finally:
            if getattr(_local, "gate", None) is self:
                _local.gate = None
                self._sem.release()


@contextmanager
def waiting() -> Iterator[None]:
    """Around a wait on another process: the calling thread's turn (if it holds one) is given back
    meanwhile and taken again after."""
    gate = getattr(_local, "gate", None)
    if gate is None:
        yield
        return
    _local.gate = None
    gate._sem.release()
    try:
        yield
    finally:
        if gate._sem.acquire(timeout=gate.wait_s):
            _local.gate = gate
        else:
            gate.unturned += 1
