"""The tests' one way to wait for something: poll a condition until it holds or a timeout passes.

    assert wait_until(lambda: svc.available, 30), "the memory process never came back"
    evs = wait_until(lambda: proxy.events("turn", wait=0), timeout=5)   # [] if none came

``wait_until`` returns the condition's last value: truthy once it held, else the falsy value it had at
the timeout (so ``assert not wait_until(..., timeout=0.2)`` says "nothing happened in 0.2 s").
``await_until`` is the same for a coroutine on an event loop (``pause`` lets Textual's pilot drive it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

# how long a test waits for memory to store a turn: a hang's bound, not a test's (memory embeds at idle
# priority, minutes behind on a loaded machine)
INGEST_BOUND_S = 600


def wait_until[T](cond: Callable[[], T], timeout: float = 15.0, *, interval: float = 0.05) -> T:
    """Call ``cond`` every ``interval`` s until it returns something truthy (returned), or ``timeout`` s passed
    (its last value is returned)."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got or time.monotonic() >= deadline:
            return got
        time.sleep(interval)


async def await_until[T](cond: Callable[[], T], timeout: float = 15.0, *, interval: float = 0.05,
                         pause: Callable[[float], Awaitable[object]] = asyncio.sleep) -> T:
    """``wait_until`` on an event loop: the loop runs (``pause``) between the calls."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got or time.monotonic() >= deadline:
            return got
        await pause(interval)
