"""The compression stage's first-sight work, in a worker process: the proxy process's interpreter lock is
not held by it.

Compressing a large tool result the first time it is seen (choosing the compressor, running it, the first
line, redacting the whole text, counting its tokens) is pure Python and regular expressions: ~5 ms of a
request's ~30 ms in the proxy process on the load benchmark, all of it holding the GIL that the event
loop and every other request also need (bench/proxy_cpu.py). :func:`first_sight` is that work as one pure
function of its arguments; the stage calls it in-line (tests, replay, evaluations: ``compression.process``
``inline``) or, in the proxy (``separate``; ``auto`` is separate in a mitmdump process), in a worker of a
:class:`Offload` pool of ``compression.workers`` processes, waiting at most until its own budget is spent.

Fails open: a worker that does not answer in time (it is stopped: the next call starts a new one), has
died, or cannot be started leaves that result uncompressed, exactly what the result gets when the stage
runs past its budget (no record: it goes whole, now and on every later request). The answer itself is the
same text, byte for byte, as in-line (``tests/test_compression_offload.py``).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import sys
import threading
import time
from typing import Any

from contextwarden.memory.secrets import redact_text

from . import Limits, compress, render

NAME = "compression.offload"  # the runtime memo holding the pool


def first_sight(text: str, tool: str, tool_input: Any, query: str, limits: Limits, mid: str, how: str,
                encoding: str | None = None) -> tuple[str, str, int | None] | None:
    """``(the text put in the result's place, the compressor's kind, its tokens)``, or None when the result
    stays as it is. The tokens are counted here only with ``encoding`` (a tiktoken encoding's name, the one
    the proxy counts this model with), else None: the caller counts."""
    got = compress(text, tool=tool, tool_input=tool_input, query=query, limits=limits)
    if got is None:
        return None
    new = dress(got, tool, tool_input, len(text), mid, how)
    return new, got.kind, _count(new, encoding)


def dress(got, tool: str, tool_input: Any, chars: int, mid: str, how: str) -> str:
    """The compressed body with its first line, redacted: the record is stored with the session, so no
    secret in it (memory keeps the original redacted too); the first line names the tool's input (a
    command can hold a token): the whole text is redacted."""
    return redact_text(render(got, tool, tool_input, chars, mid, how))


def _count(text: str, encoding: str | None) -> int | None:
    """What ``TokenCounter.count_text`` gives with a loaded tiktoken encoding (len of encode_ordinary)."""
    if encoding is None or not text:
        return None if encoding is None else 0
    try:
        import tiktoken

        return len(tiktoken.get_encoding(encoding).encode_ordinary(text))  # (tiktoken keeps it loaded)
    except Exception:  # not loadable here: the proxy counts
        return None


def _warm(encoding: str | None) -> None:
    """A new worker loads what every call needs before the first one waits on it."""
    _count("warm", encoding)


def mode(setting: str) -> str:
    """``separate`` or ``inline`` for the ``compression.process`` setting (``auto``: as memory decides
    where ``memory.process: auto`` runs: separate in the proxy, in-line in tests, replay, evaluations)."""
    if setting != "auto":
        return setting
    from contextwarden.memory import service as memory_service

    tool = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "separate" if tool.startswith(memory_service._PROXY_TOOLS) else memory_service.AUTO_PROCESS


class Unavailable(Exception):
    """The worker gave no answer in time, died, or could not be started (the result is left as it is)."""


class Offload:
    """A pool of worker processes (spawned: the proxy has threads, so no fork), started on first use and
    started again after a failure. One per runtime (``runtime.memo(NAME, ...)``), closed by the stage's
    ``cw_shutdown``."""

    def __init__(self, workers: int = 1, encoding: str | None = None) -> None:
        self.workers = max(1, int(workers))
        self.encoding = encoding
        self._pool: cf.ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.started = 0  # pools started (a restart after a failure counts)
        self.failures = 0

    def _get(self) -> cf.ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise Unavailable("closed")
            if self._pool is None:
                self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                    initializer=_warm, initargs=(self.encoding,))
                self.started += 1
            return self._pool

    def start(self) -> None:
        """Start the workers now (start-up), so the first request does not wait for a process to spawn."""
        try:
            self._get().submit(_count, "", None)
        except Exception:  # the first call tries again
            pass

    def call(self, fn, *args, timeout: float) -> Any:
        """``fn(*args)`` in a worker, waiting at most ``timeout`` seconds. Raises :class:`Unavailable`."""
        if timeout <= 0:
            raise Unavailable("no time left")
        try:
            pool = self._get()
            fut = pool.submit(fn, *args)
        except Unavailable:
            raise
        except Exception as e:  # broken or shut down under us: a new pool next time
            self._reset(None)
            raise Unavailable(f"{type(e).__name__}: {e}") from e
        try:
            return fut.result(timeout)
        except cf.TimeoutError:
            if not fut.cancel():
                # running past the time it had: stop it rather than queue every later call behind it
                self._reset(pool, wait=False)
            raise Unavailable(f"no answer within {timeout * 1000:.0f} ms") from None
        except cf.process.BrokenProcessPool as e:
            self._reset(pool, wait=False)
            raise Unavailable(f"worker died: {e}") from e

    def _reset(self, pool: cf.ProcessPoolExecutor | None, wait: bool = False) -> None:
        """Drop ``pool`` (the current one when None) and stop its processes; the next call starts anew."""
        with self._lock:
            if pool is None:
                pool = self._pool
            if pool is None or pool is not self._pool:
                return  # another thread reset it already
            self._pool = None
            self.failures += 1
        _stop(pool, wait)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            _stop(pool, wait=True)


def _stop(pool: cf.ProcessPoolExecutor, wait: bool) -> None:
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:  # a worker busy past its time would otherwise finish its call first
        try:
            p.terminate()
        except Exception:
            pass
    if not wait:  # (a request's thread: the pool's own manager thread reaps them)
        return
    deadline = time.monotonic() + 2
    for p in procs:
        try:
            p.join(max(0.0, deadline - time.monotonic()))
        except Exception:
            pass
