"""The event path's CPU: what a request's events cost the proxy, from ``bus.emit`` to a line in the log.

    .venv/bin/python bench/events_bench.py                 # 60 requests' events, 5 rounds
    .venv/bin/python bench/events_bench.py --requests 200

The events are the ones real requests emit: load_bench's sessions (the real Claude Code request, real
source code as tool output) sent in-process through ``lifecycle.send`` and ``complete`` with the
claude-code profile (memory off), captured from the bus. They are then published again on a fresh
``EventBus`` with a ``JsonlLog`` subscribed, each from the thread the proxy publishes it from (the
event loop; ``cw-core`` for the ``request`` event; ``cw-stage`` for the stages'; ``cw-turn`` for the
turn's). In
"paced" mode each event is followed by some pure-Python work (as the event loop and the stages do;
switch interval 1 ms, as ``pipeline.switch_interval_ms``) and a short wait (as the event loop's
``select``), so the writer is idle when an event comes: what waking it costs is in the figure. In
"burst" mode the events come back to back.

Printed, per request (its ~15 events here), best of the rounds: the process CPU of the event path (the
run with the log minus the same run with a subscriber that does nothing: emitting, waking the writer,
scrubbing, serialising, writing) and the writer thread's CPU. The baseline measured in the same run is
``orjson.dumps`` of the same events' raw data (no scrubbing, no thread, no file): the ratio to it is
the figure to compare across machines and commits. Last, the terminal log's redaction (outputguard's
``_Redacting``) of mitmproxy's one line a request ("Streaming response from ..."), against the same
baseline. The machine is shared: run it under ``flock /work/bench.lock`` and read the medians too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import orjson  # noqa: E402

from contextwarden.core.events import EventBus, JsonlLog  # noqa: E402

BUSY = 200  # iterations of the pure-Python loop between two events (~10-20 us)


def capture(n: int, sessions: int, warm: int) -> tuple[list[tuple], int]:
    """The events of ``n`` real requests (after ``warm`` ones): (type, data, flow_id, session) as emitted,
    with the ``forward`` and ``response`` events the interceptor and the observer emit."""
    import load_bench as lb

    from contextwarden.core.runtime import Runtime
    from contextwarden.models.base import ApiKind
    from contextwarden.request import lifecycle
    from contextwarden.settings import load_settings
    from contextwarden.wire.streams.turn import Usage

    home = Path(tempfile.mkdtemp(prefix="cw-events-bench-"))
    rt = Runtime(load_settings("claude-code", home, overrides={"memory": {"enabled": False}}), home,
                 profile="claude-code", log=False)
    seen: list = []
    rt.bus.subscribe(seen.append)
    base, hdrs = lb.claude_code_request()
    code = lb.corpus()
    ss = [lb.Session(k, base, hdrs, code, 12000, 400_000) for k in range(sessions)]
    loop = asyncio.new_event_loop()
    start = 0
    for i in range(warm + n):
        if i == warm:
            start = len(seen)
        s = ss[i % len(ss)]
        rid = uuid.uuid4().hex
        raw = s.body()
        ctx, out = lifecycle.send(rt, ApiKind.ANTHROPIC, "api.anthropic.com", "/v1/messages",
                                  list(s.headers(rid).items()), raw, rid, loop=loop, mode="active")
        # the interceptor's (addons/interceptor.py)
        ctx.emit("forward", changed=out.body is not None, reason=out.reason, bytes_in=len(raw),
                 bytes_out=len(out.body) if out.body is not None else len(raw), tokens_in=ctx.tokens_in,
                 tokens_out=ctx.tokens_out if out.body is not None else ctx.tokens_in, pipeline_ms=12.3,
                 stages=ctx.stage_results, fallback=out.fallback, fallback_reason=out.fallback_reason,
                 hook_ms=14.2, timings=ctx.timings)
        tid = f"toolu_{uuid.uuid4().hex[:16]}"
        msg = {"role": "assistant", "content": [{"type": "text", "text": "I'll read the next file."},
               {"type": "tool_use", "id": tid, "name": "Bash", "input": {"command": "cat x"}}]}
        usage = {"input_tokens": 2515, "output_tokens": 30, "cache_read_input_tokens": 22629 + i,
                 "cache_creation_input_tokens": 0}
        rt.bus.emit("response", {"api": "anthropic", "status": 200, "upstream_ms": 436.6 + i, "total_ms": 2048.5 + i,
                                 "error": None, "streamed": True, "model": ctx.model, "stop_reason": "tool_use",
                                 "usage": usage, "text_chars": 24, "tool_calls": ["Bash"], "complete": True,
                                 "events": 13}, flow_id=rid, session=ctx.session)
        lifecycle.complete(rt, ctx, lifecycle.turn_of(ApiKind.ANTHROPIC, ctx.model, msg, usage=Usage(**usage)))
        s.advance(f'"type":"tool_use","id":"{tid}"'.encode())
    rt.close()
    return [(e.type, e.data, e.flow_id, e.session) for e in seen[start:]], n


def _busy(k: int) -> int:
    x = 0
    for j in range(k):
        x += j * j
    return x


def _thread_cpu(t) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(t.ident))


STAGE_TYPES = {"stage", "strip", "tags", "clearing", "compression", "compaction", "recall", "memory"}
TURN_TYPES = {"calibration", "turn"}


class _Role(threading.Thread):
    """A thread named as the proxy's that publishes the events handed to it (its role's)."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        self.start()

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            job()
            self.done.put(None)

    def call(self, fn) -> None:
        self.jobs.put(fn)
        self.done.get()


def run(events: list[tuple], n: int, *, log: bool, paced: bool) -> dict[str, float]:
    """Publish every event on a fresh bus, each from the thread the proxy publishes it from; the process
    and the writer thread's CPU, ms per request."""
    directory = Path(tempfile.mkdtemp(prefix="cw-events-bench-log-"))
    bus = EventBus()
    sink = JsonlLog(directory) if log else None
    bus.subscribe(sink if sink is not None else (lambda ev: None))
    emit = bus.emit
    busy = BUSY if paced else 0
    roles = {"core": _Role("cw-core_0"), "stage": _Role("cw-stage_0"), "turn": _Role("cw-turn_0")}
    runs: list[tuple[str, list[tuple]]] = []  # consecutive events of one thread
    for ev in events:
        role = ("stage" if ev[0] in STAGE_TYPES else "turn" if ev[0] in TURN_TYPES else "core" if ev[0] == "request"
                else "loop")
        if runs and runs[-1][0] == role:
            runs[-1][1].append(ev)
        else:
            runs.append((role, [ev]))

    def publish(group: list[tuple]) -> None:
        for type_, data, flow_id, session in group:
            emit(type_, data, flow_id=flow_id, session=session)
            if busy:
                _busy(busy)
                time.sleep(0.0001)  # waits, as the event loop does in select: the writer gets the lock at once

    p0 = time.process_time()
    w0 = _thread_cpu(sink._thread) if sink is not None else 0.0
    for role, group in runs:
        if role == "loop":
            publish(group)
        else:
            roles[role].call(lambda g=group: publish(g))
    if sink is not None:
        while sink._buf:  # written: the writer took everything (its last write is in w1 or not)
            time.sleep(0.0005)
        time.sleep(0.002)
        w1 = _thread_cpu(sink._thread)  # (before close: the thread is gone after it)
        sink.close()
        assert (directory / "events.jsonl").stat().st_size > 0
    else:
        w1 = 0.0
    p1 = time.process_time()
    for r in roles.values():
        r.jobs.put(None)
        r.join()
    return {"process": (p1 - p0) * 1000 / n, "writer": (w1 - w0) * 1000 / n}


def floor(events: list[tuple], n: int) -> float:
    """Baseline: orjson.dumps of each event's raw data, ms per request."""
    c0 = time.process_time()
    for type_, data, flow_id, session in events:
        orjson.dumps({"type": type_, "flow_id": flow_id, "session": session, "data": data}, default=str)
    return (time.process_time() - c0) * 1000 / n


def terminal(n: int, round_: int) -> float:
    """outputguard's redaction of mitmproxy's line a request, ms per request (each line is new)."""
    import io

    from addons.outputguard import _Redacting

    out = _Redacting(io.StringIO())
    lines = [f"[0{round_}:21:{i % 60:02d}.{i % 1000:03d}][127.0.0.1:{30000 + i}] Streaming response from 127.0.0.1.\n"
             for i in range(n)]
    c0 = time.process_time()
    for line in lines:
        out.write(line)
    return (time.process_time() - c0) * 1000 / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--warm", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5, help="the captured requests published this many times a run")
    a = ap.parse_args()
    sys.setswitchinterval(0.001)
    events, n = capture(a.requests, a.sessions, a.warm)
    events, n = events * a.repeat, n * a.repeat
    print(f"{n} requests' events ({len(events) / n:.1f} a request, "
          f"{sum(len(orjson.dumps(d, default=str)) for _, d, _, _ in events) / len(events):.0f} B of data each); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    rows: dict[str, list[dict[str, float]]] = {"paced": [], "burst": []}
    floors, terms = [], []
    for r in range(a.rounds):
        floors.append(floor(events, n))
        for mode in ("paced", "burst"):
            bare = run(events, n, log=False, paced=mode == "paced")
            full = run(events, n, log=True, paced=mode == "paced")
            rows[mode].append({"path": full["process"] - bare["process"], "writer": full["writer"]})
        terms.append(terminal(n, r))
    base = min(floors)
    print(f"\nbaseline (orjson.dumps of the raw data): {base * 1000:.1f} us a request\n")
    print(f"| {'mode':<6} | {'event path us/req':>17} | {'ratio':>6} | {'writer thread':>13} |")
    print(f"|{'-' * 8}|{'-' * 19}|{'-' * 8}|{'-' * 15}|")
    for mode, rs in rows.items():
        best = min(rs, key=lambda r: r["path"])
        print(f"| {mode:<6} | {best['path'] * 1000:>17.1f} | {best['path'] / base:>6.2f} | {best['writer'] * 1000:>13.1f} |")
    print(f"\nmedians of the rounds, us/req: paced {statistics.median(r['path'] for r in rows['paced']) * 1000:.1f}, "
          f"burst {statistics.median(r['path'] for r in rows['burst']) * 1000:.1f}")
    t = min(terms)
    print(f"terminal log line (outputguard): {t * 1000:.1f} us a request, ratio {t / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
