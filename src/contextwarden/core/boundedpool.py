"""A thread pool whose queue is bounded: past ``max_pending`` waiting tasks, the OLDEST waiting task is
dropped (its future cancelled). Submitting never blocks. The proxy's turn work runs here: under a load
the workers cannot follow, it holds at most ``max_pending`` turns' parsed requests.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from contextlib import suppress


class BoundedExecutor(Executor):
    def __init__(self, max_workers: int, max_pending: int, thread_name_prefix: str = "cw-bounded",
                 on_drop: Callable[[int, int], None] | None = None) -> None:
        self.max_workers = max(1, int(max_workers))
        self.max_pending = max(1, int(max_pending))
        self.on_drop = on_drop  # (dropped so far, waiting now); called outside the lock
        self.dropped = 0
        self.completed = 0
        self._q: deque[tuple[Future, Callable, tuple, dict]] = deque()
        self._cv = threading.Condition()
        self._shutdown = False
        self._threads: list[threading.Thread] = []
        self._prefix = thread_name_prefix

    def submit(self, fn, /, *args, **kwargs) -> Future:
        fut: Future = Future()
        victims = []
        with self._cv:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._q.append((fut, fn, args, kwargs))
            while len(self._q) > self.max_pending:
                victims.append(self._q.popleft()[0])
            self.dropped += len(victims)
            dropped, waiting = self.dropped, len(self._q)
            if len(self._threads) < self.max_workers and len(self._q) > self._idle:
                t = threading.Thread(target=self._work, name=f"{self._prefix}_{len(self._threads)}", daemon=True)
                self._threads.append(t)
                t.start()
            self._cv.notify()
        for v in victims:
            v.cancel()
        if victims and self.on_drop is not None:
            with suppress(Exception):
                self.on_drop(dropped, waiting)
        return fut

    _idle = 0

    @property
    def pending(self) -> int:
        return len(self._q)

    def _work(self) -> None:
        while True:
            with self._cv:
                self._idle += 1
                while not self._q and not self._shutdown:
                    self._cv.wait()
                self._idle -= 1
                if not self._q:
                    return
                fut, fn, args, kwargs = self._q.popleft()
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args, **kwargs))
                except BaseException as e:
                    fut.set_exception(e)
                finally:
                    with self._cv:
                        self.completed += 1
            # a worker waiting for work must not keep its last task's arguments (a turn's parsed request)
            del fut, fn, args, kwargs

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None) -> None:
        """Stop taking work. ``wait``: let the workers finish (at most ``timeout`` seconds, then the
        waiting tasks are cancelled and the running ones get ``timeout`` more before they are left to
        end on their own threads)."""
        with self._cv:
            self._shutdown = True
            left = [self._q.popleft()[0] for _ in range(len(self._q))] if cancel_futures else []
            self._cv.notify_all()
        for f in left:
            f.cancel()
        if not wait:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in list(self._threads):
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        with self._cv:
            left = [self._q.popleft()[0] for _ in range(len(self._q))]
        for f in left:
            f.cancel()
        if timeout is not None:  # what is running gets as long again to finish (then it is left behind)
            deadline = time.monotonic() + timeout
            for t in list(self._threads):
                t.join(max(0.0, deadline - time.monotonic()))
