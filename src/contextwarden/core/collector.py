"""The proxy process's garbage collector and allocator (start-up, and the ``cw-gc-idle`` thread).

- ``tune_malloc``: glibc keeps freed memory for reuse (``pipeline.malloc_keep_mb``), and the interpreter's
  switch interval (``pipeline.switch_interval_ms``);
- ``settle``: once warm, what exists is frozen out of the collector's sight, and the young generation is
  collected less often (``pipeline.gc_tuning``, ``gc_threshold``);
- ``background``: under load a full collection at least every ``pipeline.gc_full_s``, its survivors then
  frozen (``gc_freeze_under_load``) and the heap trimmed; once per idle spell of ``pipeline.gc_idle_s``
  a full collection and ``malloc_trim``; after ``pipeline.forget_s`` idle the conversations' caches go as well.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
import time
from functools import cache
from typing import Any

from ..util import rss_mb


@cache
def libc():
    """The C library (ctypes), or None where it cannot be loaded (found once: ``find_library`` runs
    ``ldconfig``)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def trim_malloc() -> bool | None:
    """glibc's ``malloc_trim(0)``: return free heap pages to the system. Whether it released any; None
    where there is no ``malloc_trim`` (not glibc)."""
    fn = getattr(libc(), "malloc_trim", None)
    return None if fn is None else bool(fn(0))


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                                "uordblks", "fordblks", "keepcost")]


def heap() -> dict[str, Any]:
    """Where this process's memory is (MB): resident, glibc's heap (in use, free but kept), its mmapped
    blocks; and the interpreter's small-object blocks in use. Empty parts where not Linux or glibc."""
    out: dict[str, Any] = {"py_blocks": sys.getallocatedblocks()}
    rss = rss_mb()
    if rss is not None:
        out["rss_mb"] = round(rss, 1)
    fn = getattr(libc(), "mallinfo2", None)
    if fn is not None:
        fn.restype = _Mallinfo2
        m = fn()
        out.update({k: round(getattr(m, f) / 2**20, 1) for k, f in (("heap_mb", "arena"), ("in_use_mb", "uordblks"),
                                                                    ("free_mb", "fordblks"), ("mmapped_mb", "hblkhd"))})
    return out


def tune_malloc(p) -> bool:
    """Apply ``malloc_keep_mb`` (glibc only; True when applied) and ``switch_interval_ms`` of the
    pipeline settings ``p``."""
    sw = float(p.switch_interval_ms)
    if sw > 0:
        sys.setswitchinterval(sw / 1000)
    mb = int(p.malloc_keep_mb)
    if mb <= 0:
        return False
    mallopt = getattr(libc(), "mallopt", None)
    if mallopt is None:
        return False  # not glibc (macOS, musl...): nothing to tune
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    n = mb * 1024 * 1024
    return bool(mallopt(M_TRIM_THRESHOLD, n)) and bool(mallopt(M_MMAP_THRESHOLD, min(n, 32 * 1024 * 1024)))


def settle(p, reason: str) -> dict[str, Any] | None:
    """Freeze what exists now (the loaded libraries, models, settings) so that later collections never
    walk it, and collect the young generation less often. Called when the proxy is warm: at the end of
    start-up and again when the memory service is ready. Costs one full collection (a pause, once,
    while warming up). What it did (the ``gc`` event's data), or None when ``p.gc_tuning`` is off."""
    if not p.gc_tuning:
        return None
    t0 = time.perf_counter()
    gc.unfreeze()  # what an earlier runtime froze and no longer uses can be collected now
    gc.collect()
    gc.freeze()
    g = gc.get_threshold()
    want = list(p.gc_threshold)[:3]
    gc.set_threshold(*(max(a, int(b)) for a, b in zip(g, want + list(g[len(want):]))))
    return {"reason": reason, "frozen": gc.get_freeze_count(), "ms": round((time.perf_counter() - t0) * 1000, 1),
            "threshold": list(gc.get_threshold())}


class FullCollections:
    """Runs a full collection when none ran (ours or the interpreter's own) for a given time."""

    def __init__(self) -> None:
        self.seen = gc.get_stats()[2]["collections"]
        self.last = time.monotonic()
        self.frozen = False  # survivors frozen under load since the last idle collection

    def due(self, every_s: float, freeze: bool = False) -> dict[str, Any] | None:
        """Collect when the last full collection is ``every_s`` old (0: never); what it did, or None.
        ``freeze``: then freeze what survived (the next one walks only what is newer)."""
        now = time.monotonic()
        n = gc.get_stats()[2]["collections"]
        if n != self.seen:  # one ran meanwhile (thresholds, the idle one, someone's gc.collect())
            self.seen, self.last = n, now
        if every_s <= 0 or now - self.last < every_s:
            return None
        t0, c0 = time.perf_counter(), time.thread_time()
        freed = gc.collect()
        if freeze:
            gc.freeze()  # O(1): the survivors move to the permanent generation
            self.frozen = True
        self.seen, self.last = gc.get_stats()[2]["collections"], time.monotonic()
        # cpu_ms: the collection's own work (holding the interpreter lock); ms also counts the time
        # other threads ran meanwhile (the garbage's finalizers are Python code that lets them)
        return {"freed": freed, "ms": round((time.perf_counter() - t0) * 1000, 1),
                "cpu_ms": round((time.thread_time() - c0) * 1000, 1), "frozen": gc.get_freeze_count() if freeze else None}


# Under load, malloc_trim after a full collection at most this often (a trim takes 10-30 ms)
TRIM_S = 15.0


def background(rt) -> None:
    """The ``cw-gc-idle`` thread of runtime ``rt`` until it closes: under load a full collection at least
    every ``gc_full_s`` (what only a full collection frees, the requests' cyclic garbage, must not pile
    up for as long as the load lasts; a ``gc`` event, reason ``load``); a full collection when no request
    came for ``gc_idle_s`` and some is due (the raised thresholds make them rare under load; this runs
    them while nobody waits)."""
    done_at = forgot_at = -1.0
    trimmed_at = float("-inf")  # (the first collection under load trims)
    full = FullCollections()
    while not rt._closed.wait(1.0):
        p = rt.settings.pipeline
        # (only while requests come: an idle proxy has its idle collection, and nothing to free)
        info = full.due(p.gc_full_s, p.gc_tuning and p.gc_freeze_under_load) if rt.last_request >= full.last else None
        if info is not None:
            # and, at most once a TRIM_S, the freed heap back to the system (a load may never pause)
            if time.monotonic() - trimmed_at >= TRIM_S:
                t0 = time.perf_counter()
                info["trimmed"] = trim_malloc()
                info["trim_ms"] = round((time.perf_counter() - t0) * 1000, 1)
                trimmed_at = time.monotonic()
            rt.bus.emit("gc", {"reason": "load", **info})
        if p.gc_idle_s <= 0:
            continue
        if time.monotonic() - rt.last_request >= max(p.gc_idle_s, p.forget_s) and rt.last_request > forgot_at:
            # a longer idle spell: what the runtime remembers of conversations goes too (each is read
            # whole by its next request), and with it what was frozen under load; the RSS falls back
            n = len(rt.conversations)
            rt.forget_conversations()
            full.frozen = False
            gc.unfreeze()
            freed = gc.collect()
            gc.freeze()
            trim_malloc()
            rt.bus.emit("gc", {"reason": "forget", "conversations": n, "freed": freed, **heap()})
            forgot_at = done_at = time.monotonic()
            continue
        if time.monotonic() - rt.last_request >= p.gc_idle_s and rt.last_request > done_at:
            if full.frozen:  # what was frozen under load and has become cyclic garbage since: freed now
                full.frozen = False
                gc.unfreeze()
                rt.bus.emit("gc", {"reason": "idle", "freed": gc.collect()})
                gc.freeze()
            elif gc.get_count()[2] > 0:
                gc.collect()
            trim_malloc()  # once per idle spell: give the freed heap back to the system (RSS shrinks)
            done_at = time.monotonic()
