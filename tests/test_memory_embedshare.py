"""The embedding worker's group weight follows the proxy's load (memory/embedshare.py): while turns
come faster than ``memory.embed_busy_turns_per_s``, its scheduling group is at nice 19 (requests first),
back at ``memory.embed_group_nice`` once they come at under half that; through the real memory process,
a burst of turns moves the real worker's group."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from contextwarden.memory.embedshare import EmbedShare, autogroup_nice, set_autogroup_nice
from contextwarden.memory.service import get_service
from tests.support.wait import wait_until

from .test_memory_stage import converse, replayer

pytestmark = pytest.mark.skipif(not Path("/proc/self/autogroup").exists(),
                                reason="needs Linux autogroups (kernel.sched_autogroup_enabled)")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _sleeper() -> subprocess.Popen:
    # a process leading its own session, as the embedding worker does (its group is its own)
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)


def _settle(share: EmbedShare) -> None:
    # an unprivileged process may change an autogroup's nice every 100 ms (EAGAIN): the real thread ticks
    # every second; here, tick until the groups agree (or give up)
    wait_until(lambda: (share.tick(), all(autogroup_nice(p) == share.nice() for p in share.pids()))[1], 2.4,
               interval=0.12)


def test_the_group_yields_while_turns_come_fast_and_gets_its_share_back_when_they_stop():
    procs = [_sleeper()]
    clock = Clock()
    events: list[dict] = []
    share = EmbedShare(lambda: [p.pid for p in procs], quiet_nice=0, busy_per_s=2.0, emit=events.append,
                       window_s=10.0, clock=clock)
    try:
        pid = procs[0].pid
        _settle(share)
        assert autogroup_nice(pid) == 0 and not share.busy
        for _ in range(10):  # one person's pace: 1 turn a second
            clock.t += 1.0
            share.turn()
        _settle(share)
        assert autogroup_nice(pid) == 0 and not share.busy and events == []
        for _ in range(60):  # a team's: 6 a second
            clock.t += 1 / 6
            share.turn()
        _settle(share)
        assert share.busy and autogroup_nice(pid) == 19
        assert [e["embedding"] for e in events] == ["yielding"] and events[0]["turns_per_s"] >= 6.0
        # a worker restarted meanwhile starts at its quiet weight: the next tick lowers it too
        procs.append(_sleeper())
        _settle(share)
        assert [autogroup_nice(p.pid) for p in procs] == [19, 19]
        # 1.5 a second: under the threshold but over half of it, still yielding (no flapping at the edge)
        for _ in range(15):
            clock.t += 1 / 1.5
            share.turn()
        _settle(share)
        assert share.busy and len(events) == 1
        clock.t += 11.0  # quiet: back to the full share
        _settle(share)
        assert not share.busy and [autogroup_nice(p.pid) for p in procs] == [0, 0]
        assert events[-1] == {"embedding": "full share", "turns_per_s": 0.0}
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_a_process_that_does_not_lead_its_session_is_left_alone():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # our session's group
    try:
        before = autogroup_nice(os.getpid())
        assert set_autogroup_nice(p.pid, 19) is False
        assert autogroup_nice(p.pid) == before == autogroup_nice(os.getpid())
    finally:
        p.kill()
        p.wait()


def _embedding_worker(memory_pid: int) -> int | None:
    for tid in os.listdir(f"/proc/{memory_pid}/task"):
        try:  # (a thread, or a child, may end between the listing and the read)
            for child in Path(f"/proc/{memory_pid}/task/{tid}/children").read_text().split():
                if b"contextwarden.compress.offload" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return int(child)
        except OSError:
            continue
    return None


def test_turns_through_the_memory_process_move_the_real_workers_group(tmp_path):
    rp = replayer(tmp_path, "memory: {process: separate, embed_busy_turns_per_s: 0.5}")
    try:
        svc = get_service(rp.runtime)
        assert wait_until(lambda: _embedding_worker(svc.pid) is not None, 60)
        worker = _embedding_worker(svc.pid)
        assert autogroup_nice(worker) == 0  # quiet: the group's full share (memory.embed_group_nice)
        converse(rp, turns=12)  # 12 turns in well under 10 s: over 0.5 a second
        assert wait_until(lambda: autogroup_nice(worker) == 19, 30)
        assert wait_until(lambda: any(e.type == "memory" and e.data.get("embedding") == "yielding"
                                      for e in rp.runtime.bus.recent), 10)
    finally:
        rp.close()


def _busy(share: EmbedShare, clock: Clock) -> None:
    for _ in range(60):  # a team's pace: 6 turns a second
        clock.t += 1 / 6
        share.turn()
    share.tick()
    assert share.busy


def _in_thread(fn):
    import threading

    done = threading.Event()
    t = threading.Thread(target=lambda: (fn(), done.set()), daemon=True)
    t.start()
    return done


def test_while_busy_background_batches_take_turns_and_quiet_they_do_not_wait():
    clock = Clock()
    events: list[dict] = []
    share = EmbedShare(lambda: [], busy_per_s=2.0, clock=clock, busy_share=0.25, emit=events.append)
    try:
        share.ran(2.0)  # quiet: a batch earns no wait
        assert _in_thread(share.before).wait(10) and share.waited_s == 0  # (the clock stands still: no wait)
        _busy(share, clock)
        share.before()  # busy, but no batch ran yet: it goes
        share.ran(1.0)  # a batch of 1 s at a 25% share: the next waits 3 s
        done = _in_thread(share.before)
        assert not done.wait(1.5)
        clock.t += 2.0
        assert not done.wait(1.5)  # (1 s left)
        clock.t += 1.0
        assert done.wait(3.0)
        assert share.waited_s == pytest.approx(3.0)
        clock.t += 11.0  # quiet: the event says how long batches waited for their turns meanwhile
        share.tick()
        assert events[0]["embedding"] == "yielding" and events[0]["share"] == 0.25
        assert events[-1] == {"embedding": "full share", "turns_per_s": 0.0, "held_s": 3.0}
    finally:
        share.close()


def test_a_share_of_zero_holds_batches_until_the_load_falls_and_closing_releases_them():
    import threading

    clock = Clock()
    share = EmbedShare(lambda: [], busy_per_s=2.0, clock=clock, busy_share=0.0)
    _busy(share, clock)
    done = _in_thread(share.before)
    assert not done.wait(1.5)
    clock.t += 11.0  # no turns for longer than the window: quiet again
    share.tick()
    assert not share.busy and done.wait(3.0)
    # a batch held back while memory closes goes at once (shutdown's flush is not throttled)
    _busy(share, clock)
    closed = threading.Event()
    done = _in_thread(lambda: share.before(closed))
    assert not done.wait(1.0)
    share.close()
    assert done.wait(3.0)  # (the clock stands still: closing released it)
