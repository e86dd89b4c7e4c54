"""Work in worker processes, off the calling process's interpreter lock (the compression stage's first
sight, ``compress/offload.py``; memory's embeddings, ``memory/embedworker.py``).

Fails open: a worker that does not answer in time (left to finish; restarted only once ``HUNG_S``
late), has died, is starting or cannot start raises :class:`Unavailable`, and the caller does without.
The calling thread speaks to its worker over a pipe itself (no pool threads), and the worker is
``python -m`` this module, never a re-run of the caller's main script.
"""

from __future__ import annotations

import importlib
import os
import pickle
import queue
import select
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

# a call's wait, in parts (Offload.call's ``timings``): for a free worker, to the worker (sending, and the
# worker being scheduled), the worker's own work, and back (the caller woken and holding the GIL again)
PARTS = ("offload_queue", "offload_send", "offload_work", "offload_back")
_READ = 1 << 16  # what one read of an answer asks for (a pipe holds 64 KiB)
# A worker whose answer came too late is left to finish (the next call reads and drops that answer);
# only this late is it restarted (a restart's start-up leaves every result meanwhile whole)
HUNG_S = 10.0


def _warm(modules: tuple[str, ...] = ()) -> None:
    """A new worker imports the modules of the functions it serves before the first call waits on it (their
    imports took the first call of each worker past the compression stage's 200 ms: its first results went
    whole, and the TUI showed an error)."""
    for m in modules:
        with suppress(Exception):
            importlib.import_module(m)


_PROXY_TOOLS = ("mitmdump", "mitmproxy", "mitmweb")


def process_mode(setting: str, settings) -> str:
    """``separate`` or ``inline`` for a ``*.process`` setting (memory's, the compression stage's): ``auto``
    is separate in a mitmdump / mitmproxy / mitmweb process, else ``settings.proxy.auto_process`` (inline
    in a test's own process, replay, evaluations, the CLI)."""
    if setting != "auto":
        return setting
    tool = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "separate" if tool.startswith(_PROXY_TOOLS) else settings.proxy.auto_process


class Unavailable(Exception):
    """The worker gave no answer in time, died, or could not be started (the result is left as it is)."""


class _Worker:
    """One worker process (``python -m contextwarden.core.workerpool``: started, not forked, and without
    re-running the proxy's main script) spoken to over its stdin and stdout: a call is a length-prefixed
    pickle of ``(fn, args)``, the answer one of ``(ok, value, received, answered)`` (monotonic times). The calling thread writes and reads
    itself (no pool threads taking the interpreter lock); one call at a time (``lock``)."""

    def __init__(self, role: str, preload: tuple[str, ...] = ()) -> None:
        self.role = role  # named on the worker's command line (what a process listing shows it does)
        self.preload = preload  # modules imported before it says it is ready
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self._ready = False
        self.late: float | None = None  # when a call gave up on its answer (still to be read), else None

    def start(self) -> None:
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[1])  # this contextwarden package first (as memory's process)
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen([sys.executable, "-m", "contextwarden.core.workerpool", self.role,
                                      *self.preload],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     bufsize=0, env=env, start_new_session=True)
        self._ready = False
        self.late = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self, wait: float = 0.0) -> bool:
        """Whether the worker has loaded what it needs (it says so with an empty answer once, at start)."""
        if not self._ready and self.proc is not None:
            if select.select([self._pipes()[1].fileno()], [], [], wait)[0]:
                self._ready = self._answer(time.monotonic() + 5) == b""
        return self._ready

    def _pipes(self) -> tuple[IO[bytes], IO[bytes]]:
        p = self.proc
        assert p is not None and p.stdin is not None and p.stdout is not None  # (started with both pipes)
        return p.stdin, p.stdout

    def exchange(self, payload: bytes, deadline: float) -> bytes:
        """Send one call (one write), read its answer by ``deadline`` (``time.monotonic``). Raises
        TimeoutError, OSError."""
        self._pipes()[0].write(len(payload).to_bytes(4, "big") + payload)
        return self._answer(deadline)

    def _answer(self, deadline: float) -> bytes:
        """One length-prefixed answer, read as it is available (usually one read: every return from a
        blocking call waits for the interpreter lock again). One call is in flight at a time."""
        fd, got, size = self._pipes()[1].fileno(), bytearray(), None
        while size is None or len(got) < size:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                if got:  # part of an answer: what is left of it cannot be told from the next one
                    raise EOFError("an answer cut short")
                raise TimeoutError
            chunk = os.read(fd, _READ if size is None else max(_READ, size - len(got)))
            if not chunk:
                raise EOFError("the worker exited")
            got += chunk
            if size is None and len(got) >= 4:
                size = 4 + int.from_bytes(got[:4], "big")
        return bytes(got[4:size])

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None:
            return
        for f in (f for f in (p.stdin, p.stdout) if f is not None):
            with suppress(Exception):
                f.close()
        with suppress(Exception):
            p.kill()
            p.wait(2)


class Offload:
    """``workers`` worker processes, started on first use (or :meth:`start`) and again after a failure. One
    per runtime (``runtime.memo(NAME, ...)``), closed by the stage's ``cw_shutdown``."""

    def __init__(self, workers: int = 1, role: str = "compression", preload: tuple[str, ...] = ()) -> None:
        self.workers = [_Worker(role, preload) for _ in range(max(1, int(workers)))]
        # the workers no call holds, the longest free first: a call takes whichever is free first,
        # rather than waiting on one in turn while another is free
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for w in self.workers:
            self._idle.put(w)
        self._closed = False
        self.started = 0  # worker processes started (a restart after a failure counts)
        self.failures = 0  # workers stopped: no answer in time, or dead

    def start(self) -> None:
        """Start the workers now (start-up, not waiting for them), so that the first request finds them ready."""
        for w in self.workers:
            with w.lock, suppress(Exception):  # the first call tries again
                self._ensure(w)

    def wait_ready(self, timeout: float) -> bool:
        """Start the workers and wait until every one is ready (tests, benchmarks)."""
        self.start()
        deadline = time.monotonic() + timeout
        for w in self.workers:
            with w.lock:
                if not w.alive() or not w.ready(max(0.0, deadline - time.monotonic())):
                    return False
        return True

    def _ensure(self, w: _Worker) -> None:
        """A worker process for ``w`` (a dead one is started again). Raises Unavailable while it starts:
        its start-up (imports) is never charged to a call's time."""
        if self._closed:
            raise Unavailable("closed")
        if not w.alive():
            if w.proc is not None:
                self.failures += 1
                w.stop()
            w.start()
            self.started += 1
        if not w.ready():
            raise Unavailable("the worker is starting")

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers if w.proc is not None and w.alive()]

    def _free(self, deadline: float) -> _Worker:
        """The first worker free (by ``deadline``), held (its ``lock``) until :meth:`_release`."""
        try:
            w = self._idle.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise Unavailable("no answer in time: every worker busy") from None
        if not w.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):  # (start() may hold it a moment)
            self._idle.put(w)
            raise Unavailable("no answer in time: every worker busy")
        return w

    def _catch_up(self, w: _Worker, deadline: float) -> None:
        """Read and drop the answer ``w`` owes a call that gave up on it, by ``deadline``. Raises
        Unavailable meanwhile (stopping ``w`` once it is :data:`HUNG_S` late)."""
        try:
            w._answer(deadline)
        except TimeoutError:
            if w.late is not None and time.monotonic() - w.late > HUNG_S:
                self._fail(w)
                raise Unavailable(f"a worker gave no answer for {HUNG_S:.0f} s: stopped") from None
            raise Unavailable("every worker still busy with a call past its time") from None
        w.late = None

    def _release(self, w: _Worker) -> None:
        w.lock.release()
        self._idle.put(w)

    def call(self, fn, *args, timeout: float, timings: dict[str, float] | None = None) -> Any:
        """``fn(*args)`` in a worker, waiting at most ``timeout`` seconds. Raises :class:`Unavailable`.
        ``timings``: where the call's wait went is added there (ms; see :data:`PARTS`)."""
        if timeout <= 0:
            raise Unavailable("no time left")
        t0 = time.monotonic()
        deadline = t0 + timeout
        w = self._free(deadline)
        try:
            try:
                self._ensure(w)
                if w.late is not None:
                    self._catch_up(w, deadline)
                t1 = time.monotonic()
                ok, value, t_in, t_out = pickle.loads(
                    w.exchange(pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL), deadline))
            except TimeoutError:
                w.late = time.monotonic()  # its answer is read by the next call on it (HUNG_S)
                raise Unavailable(f"no answer within {timeout * 1000:.0f} ms") from None
            except Unavailable:
                raise
            except Exception as e:  # died, or could not start
                self._fail(w)
                raise Unavailable(f"worker died: {type(e).__name__}: {e}") from e
        finally:
            self._release(w)
        if timings is not None:
            # CLOCK_MONOTONIC is the machine's: the worker's stamps compare with this process's
            for k, a, b in zip(PARTS, (t0, t1, t_in, t_out), (t1, t_in, t_out, time.monotonic())):
                timings[k] = round(timings.get(k, 0.0) + max(0.0, b - a) * 1000, 3)
        if not ok:
            raise Unavailable(f"the call failed in the worker: {value}")
        return value

    def _fail(self, w: _Worker) -> None:
        self.failures += 1
        w.stop()

    def close(self) -> None:
        self._closed = True
        for w in self.workers:
            w.stop()


def _serve(modules: tuple[str, ...] = ()) -> None:
    """The worker's loop: calls from stdin, answers to stdout, until stdin closes (the proxy is gone)."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything a module prints goes to stderr, never into the answers
    inp = sys.stdin.buffer
    _warm(modules)
    out.write(bytes(4))  # ready
    while True:
        head = inp.read(4)
        t_in = time.monotonic()  # (woken by the call)
        if len(head) < 4:
            return
        fn, args = pickle.loads(inp.read(int.from_bytes(head, "big")))
        try:
            ok, value = True, fn(*args)
        except Exception as e:  # the caller leaves the result whole
            ok, value = False, f"{type(e).__name__}: {e}"
        data = pickle.dumps((ok, value, t_in, time.monotonic()), protocol=pickle.HIGHEST_PROTOCOL)
        out.write(len(data).to_bytes(4, "big") + data)


if __name__ == "__main__":
    _serve(tuple(sys.argv[2:]))  # (argv[1]: the role)
