"""The embedding worker's share of the CPU follows the proxy's load.

The embedding worker (``embedworker.py``) runs at the idle class in a session of its own, and a session is
a scheduling group that competes by its weight, whatever its threads' class (Linux's autogroups). With
its group at nice 0 (``memory.embed_group_nice``, the default) it takes a group's full share: under
issue 19's load (50 sessions on 2 cores) ~0.5 of a core, as much as the engine, and every process on a
request's path waits for a core behind it. Stopped in every other 15 s of one run of that load, the
proxied first byte was p50 53.5 against 70.4 ms, p99 255 against 326 ms. At nice 19 it would take only
what nobody else wants, but on a machine kept busy by something else (a CI job, two busy loops beside the
test suite) embedding then stops outright, and memory finds nothing new.

So the group's weight follows what the machine is for at the moment: while the proxy hands memory more
than ``memory.embed_busy_turns_per_s`` turns a second (over the last ``WINDOW_S``), the group goes to
nice 19 (requests first; embedding lags, the pending table holds what waits, the lag is reported); once
the rate falls under half of that, back to ``memory.embed_group_nice``. One person's tool loop is well
under the threshold, so a single user's memory keeps up as before; a team's load is well over it.

The weight alone left the worker ~0.5 of a core under that load (the CPU nobody else wanted at each
moment), and a request's processes still waited behind it whenever they woke: stopped outright in
every other 15 s of one run, the proxied first byte was p90 136 against 174 ms and p99 213 against
331 ms (p50 57 against 60). So while busy the worker also gets turns (:meth:`EmbedShare.before`, before
each background batch): after a batch that took ``t`` seconds, the next waits ``t * (1/share - 1)``
(``memory.embed_busy_share``, 5% of the time by default; 0: no batch until the load falls). Embedding
still progresses under a sustained load, at a rate that no longer depends on how busy the scheduler is.

The group is the worker's own (it leads its session), so its nice value is written to
``/proc/PID/autogroup`` from the memory process: raising it and lowering it back to 0 need no privilege
(below 0 would); an unprivileged process may change an autogroup's nice at most every 100 ms
(``EAGAIN``), in which case the next tick tries again.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable

WINDOW_S = 10.0  # turns counted over this many seconds
TICK_S = 1.0
BUSY_NICE = 19


def autogroup_nice(pid: int) -> int | None:
    """The nice value of ``pid``'s autogroup; None without autogroups (or that process)."""
    try:
        with open(f"/proc/{pid}/autogroup") as f:
            return int(f.read().rsplit("nice", 1)[1])
    except (OSError, ValueError, IndexError):
        return None


def set_autogroup_nice(pid: int, nice: int) -> bool:
    """Set it, only for a process that leads its own session (its group is its own and its children's);
    False when it was not set (no such group, not its own, or the kernel's rate limit: try again)."""
    try:
        if os.getsid(pid) != pid:
            return False
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write(str(max(0, min(19, int(nice)))))
        return True
    except (AttributeError, OSError, ValueError):
        return False


class EmbedShare:
    """``turn()`` for each turn the proxy hands memory; a thread (``start``) sets the worker's group weight
    once a second. ``pids``: the embedding worker's processes now (it is restarted when it dies)."""

    def __init__(self, pids: Callable[[], list[int]], quiet_nice: int = 0, busy_per_s: float = 2.0,
                 emit: Callable[[dict], None] | None = None, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic, busy_share: float = 1.0) -> None:
        self.pids = pids
        self.busy_share = busy_share
        self._next_batch = 0.0  # (clock) while busy, no background batch starts before this
        self.waited_s = 0.0  # seconds background batches waited for their turns, in total
        self._waited_before = 0.0  # waited_s when the current busy period began
        self.quiet_nice = quiet_nice
        self.busy_per_s = busy_per_s
        self.emit = emit
        self.window_s = window_s
        self.clock = clock
        self.busy = False
        self._turns: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def turn(self) -> None:
        with self._lock:
            self._turns.append(self.clock())

    def rate(self) -> float:
        """Turns a second over the window."""
        now = self.clock()
        with self._lock:
            while self._turns and self._turns[0] < now - self.window_s:
                self._turns.popleft()
            return len(self._turns) / self.window_s

    def nice(self) -> int:
        return BUSY_NICE if self.busy else self.quiet_nice

    def tick(self) -> None:
        """Decide (into busy at the threshold, out under half of it: no flapping at the edge) and make every
        worker's group agree (read back each time: a restarted worker starts at the quiet value)."""
        if self.busy_per_s > 0:
            r = self.rate()
            busy = r >= self.busy_per_s if not self.busy else r >= self.busy_per_s / 2
            if busy != self.busy:
                self.busy = busy
                if busy:
                    self._waited_before = self.waited_s
                if self.emit is not None:
                    ev = {"embedding": "yielding" if busy else "full share", "turns_per_s": round(r, 1)}
                    if busy and self.busy_share < 1:
                        ev["share"] = self.busy_share
                    elif not busy and self.busy_share < 1:  # how long batches waited for their turns meanwhile
                        ev["held_s"] = round(self.waited_s - self._waited_before, 1)
                    self.emit(ev)
        self.apply()

    def apply(self) -> None:
        want = self.nice()
        for pid in self.pids():
            have = autogroup_nice(pid)
            if have is not None and have != want:
                set_autogroup_nice(pid, want)

    def start(self) -> EmbedShare:
        if self.busy_per_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cw-embed-share", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                self.tick()
            except Exception:  # a weight is an optimisation: never the memory process's failure
                pass

    def before(self, closed: threading.Event | None = None) -> None:
        """Before a background batch: while busy, wait until the last batch's off-time has passed (with a
        share of 0, until the load falls). Returns at once when quiet, and as soon as the service closes."""
        t0 = self.clock()
        while self.busy and self.busy_share < 1 and not self._stop.is_set() and not (closed and closed.is_set()):
            left = self._next_batch - self.clock()
            if left <= 0 and self.busy_share > 0:
                break
            self._stop.wait(min(TICK_S, left) if left > 0 else TICK_S)  # (busy is re-read every tick)
        self.waited_s += self.clock() - t0

    def ran(self, seconds: float) -> None:
        """A background batch took ``seconds``: while busy, the next one waits for its share."""
        if self.busy and 0 < self.busy_share < 1:
            self._next_batch = self.clock() + seconds * (1 / self.busy_share - 1)

    def close(self) -> None:
        """Stop deciding (the memory service then stops the worker itself)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
