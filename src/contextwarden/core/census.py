"""An opt-in look inside the live proxy's memory, for finding what grows (issue 19's RSS).

    CONTEXTWARDEN_CENSUS=/tmp/census.jsonl mitmdump -s addons/contextwarden.py ...

appends one JSON line to that file every ``CONTEXTWARDEN_CENSUS_S`` seconds (default 30) and on SIGUSR2:
the process's RSS; glibc's heap (``mallinfo2``: in use, free, mmapped); the collector's counts and
how many objects a full collection frees (and the RSS it gives back), then what ``malloc_trim(0)`` gives
back (if trimming returns a lot, the growth is freed-but-kept heap, not live objects); the tracked
objects by type (top 30 by count and by shallow size); ``len()`` of every sized attribute of the runtime
and the objects registered with :func:`watch` for it (the bounded structures: conversations, body ring, queues);
and with ``CONTEXTWARDEN_TRACEMALLOC=N`` (frames), ``tracemalloc``'s top 25 lines by size and the top 25
by growth since the previous census. A census pauses the proxy for about a second per million objects
and runs a full collection: a debugging tool, off unless asked for.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import sys
import threading
import time
import tracemalloc
from collections import Counter
from typing import Any

import orjson

from .collector import libc, trim_malloc

WATCHED = "census.watched"  # the runtime's memo of what a census reports beside it


def watch(runtime: Any, name: str, obj: Any) -> None:
    """Report ``len()`` of ``obj``'s sized attributes (and of ``obj``) in every census of ``runtime``."""
    runtime.memo(WATCHED, dict)[name] = obj


def rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return None


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def mallinfo() -> dict[str, float] | None:
    """glibc's heap in MB (main arena and the others): in use, free inside it, mmapped chunks."""
    fn = getattr(libc(), "mallinfo2", None)
    if fn is None:
        return None
    fn.restype = _Mallinfo2
    m = fn()
    return {"heap_mb": round(m.arena / 1e6, 1), "in_use_mb": round(m.uordblks / 1e6, 1),
            "free_mb": round(m.fordblks / 1e6, 1), "mmapped_mb": round(m.hblkhd / 1e6, 1)}


def sizes(obj: Any) -> dict[str, int]:
    """``len()`` of ``obj`` and of its sized attributes (one level)."""
    out: dict[str, int] = {}
    try:
        out["len"] = len(obj)
    except TypeError:
        pass
    attrs = getattr(obj, "__dict__", None) or {}
    for k in getattr(type(obj), "__slots__", ()):
        if hasattr(obj, k):
            attrs = {**attrs, k: getattr(obj, k)}
    for k, v in attrs.items():
        if isinstance(v, (str, bytes)):
            continue
        try:
            out[k] = v.qsize() if hasattr(v, "qsize") else len(v)  # (queues have no len())
        except Exception:  # not sized, or a len() that fails: not a structure to report
            continue
    return out


def _name(o: Any) -> str:
    t = type(o)
    return f"{t.__module__}.{t.__qualname__}"


def types_census(top: int = 30) -> dict[str, Any]:
    """The collector-tracked objects by type: the top ``top`` by count and by shallow size (MB)."""
    count: Counter = Counter()
    size: Counter = Counter()
    for o in gc.get_objects():
        name = _name(o)
        count[name] += 1
        try:
            size[name] += sys.getsizeof(o)
        except Exception:  # a type whose __sizeof__ fails
            pass
    return {"by_count": count.most_common(top),
            "by_size_mb": [(n, round(s / 1e6, 2)) for n, s in size.most_common(top)],
            "tracked": sum(count.values())}


def collect_garbage(top: int = 20) -> tuple[int, dict[str, Any]]:
    """A full collection; what it freed, by type (top ``top``), and the MB of the bytes and strings
    the freed containers held directly (what waiting for the collection costs)."""
    old = gc.get_debug()
    gc.set_debug(old | gc.DEBUG_SAVEALL)
    try:
        n = gc.collect()
        found = list(gc.garbage)
        gc.garbage.clear()
    finally:
        gc.set_debug(old)
    count: Counter = Counter(map(_name, found))
    seen: set[int] = set()
    held = 0
    for o in found:
        for r in gc.get_referents(o):
            if isinstance(r, (bytes, bytearray, str)) and id(r) not in seen:
                seen.add(id(r))
                held += sys.getsizeof(r)
    errors: Counter = Counter()
    for o in found:
        if isinstance(o, BaseException):
            tb = o.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            at = f"{tb.tb_frame.f_code.co_filename.rsplit('/', 3)[-1]}:{tb.tb_lineno}" if tb is not None else "?"
            errors[f"{type(o).__name__}: {str(o)[:80]} at {at}"] += 1
    del found
    gc.collect()  # what SAVEALL kept is still cyclic garbage: free it now
    return n, {"by_count": count.most_common(top), "held_bytes_mb": round(held / 1e6, 1),
               "exceptions": errors.most_common(5)}


class Census:
    def __init__(self, path: str, runtime: Any, every_s: float = 30.0, frames: int = 0) -> None:
        self.path = path
        self.runtime = runtime
        self.every_s = every_s
        self.frames = frames
        self._now = threading.Event()
        self._stop = threading.Event()
        self._prev: Any = None
        self.t0 = time.monotonic()
        if frames > 0:
            tracemalloc.start(frames)

    def start(self) -> Census:
        threading.Thread(target=self._run, name="cw-census", daemon=True).start()
        try:
            signal.signal(signal.SIGUSR2, lambda *_: self._now.set())
        except ValueError:  # not the main thread: the interval alone
            pass
        return self

    def stop(self) -> None:
        self._stop.set()
        self._now.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._now.wait(self.every_s)
            self._now.clear()
            if self._stop.is_set():
                return
            try:
                line = self.take()
            except Exception as e:  # a census must never stop the proxy
                line = {"error": repr(e)}
            with open(self.path, "ab") as f:
                f.write(orjson.dumps(line, default=str) + b"\n")

    def take(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"t": round(time.monotonic() - self.t0, 1), "rss_mb": rss_mb(), "malloc": mallinfo(),
                               "gc_count": gc.get_count(), "gc_threshold": gc.get_threshold(),
                               "gc_frozen": gc.get_freeze_count(),
                               "gc_collections": [s["collections"] for s in gc.get_stats()]}
        rec["types"] = types_census()
        rt = self.runtime
        watched = getattr(rt, "_memos", {}).get(WATCHED, {})
        rec["sizes"] = {"runtime": sizes(rt), **{k: sizes(v) for k, v in list(watched.items())}}
        rec["memos"] = {k: sizes(v) for k, v in getattr(rt, "_memos", {}).items()}
        rec["threads"] = threading.active_count()
        if self.frames > 0:
            rec["tracemalloc"] = self._tracemalloc()
        t = time.perf_counter()
        rec["gc_freed"], rec["garbage"] = collect_garbage()
        rec["gc_ms"] = round((time.perf_counter() - t) * 1000)
        rec["rss_after_gc_mb"] = rss_mb()
        if trim_malloc() is not None:
            rec["rss_after_trim_mb"] = rss_mb()
            rec["malloc_after_trim"] = mallinfo()
        return rec

    def _tracemalloc(self) -> dict[str, Any]:
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        def where(tb) -> str:  # innermost frame first
            return " < ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in reversed(tb))

        out = {"traced_mb": round(tracemalloc.get_traced_memory()[0] / 1e6, 1),
               "top": [(where(s.traceback), round(s.size / 1e6, 2), s.count) for s in snap.statistics("traceback")[:25]]}
        if self._prev is not None:
            out["growth"] = [(where(s.traceback), round(s.size_diff / 1e6, 2), s.count_diff)
                             for s in snap.compare_to(self._prev, "traceback")[:25]]
        self._prev = snap
        return out


def from_env(runtime: Any) -> Census | None:
    """The census ``CONTEXTWARDEN_CENSUS`` asks for (started), or None."""
    path = os.environ.get("CONTEXTWARDEN_CENSUS")
    if not path:
        return None
    every = float(os.environ.get("CONTEXTWARDEN_CENSUS_S") or 30)
    frames = int(os.environ.get("CONTEXTWARDEN_TRACEMALLOC") or 0)
    return Census(path, runtime, every, frames).start()
