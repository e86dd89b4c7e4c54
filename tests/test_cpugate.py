"""The proxy's CPU turns (cpugate.py): at most N request threads run at once, a wait on another process
gives the turn back, and a thread that gets no turn in time runs anyway (a stuck stage never stops the
proxy)."""

from __future__ import annotations

import threading
import time

from contextwarden.cpugate import CpuGate, waiting


def _run_all(gate: CpuGate, n: int, body) -> int:
    """``n`` threads each running ``body`` inside a turn; returns the most that were inside at once."""
    inside, most, lock = [0], [0], threading.Lock()

    def one():
        with gate.turn():
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            body()
            with lock:
                inside[0] -= 1

    ts = [threading.Thread(target=one) for _ in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    return most[0]


def test_no_more_threads_than_turns_run_at_once():
    assert _run_all(CpuGate(2), 8, lambda: time.sleep(0.05)) == 2
    assert _run_all(CpuGate(0), 8, lambda: time.sleep(0.05)) == 8  # 0: no limit


def test_a_thread_waiting_on_another_process_gives_its_turn_back():
    gate = CpuGate(1)
    in_wait, other_ran = threading.Event(), threading.Event()

    def waiter():
        with gate.turn():
            with waiting():
                in_wait.set()
                assert other_ran.wait(5)  # another thread got the only turn meanwhile
            # and the turn is this thread's again: nobody else gets in now
            assert not gate._sem.acquire(timeout=0.05)

    w = threading.Thread(target=waiter)
    w.start()
    assert in_wait.wait(5)
    with gate.turn():
        other_ran.set()
    w.join(5)
    assert not w.is_alive() and gate.unturned == 0


def test_a_turn_held_for_ever_only_delays_the_others():
    gate = CpuGate(1, wait_s=0.1)
    stuck, release = threading.Event(), threading.Event()

    def hang():
        with gate.turn():
            stuck.set()
            release.wait(10)

    threading.Thread(target=hang, daemon=True).start()
    assert stuck.wait(5)
    t0 = time.monotonic()
    with gate.turn():
        ran = True
    assert ran and time.monotonic() - t0 < 2 and gate.unturned == 1
    release.set()


def test_turns_do_not_nest():
    gate = CpuGate(1, wait_s=0.1)
    with gate.turn():
        with gate.turn():  # the same thread: no second turn asked for (it would wait on itself)
            pass
    assert gate.unturned == 0
