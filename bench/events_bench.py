"""The event path's CPU: what a request's events cost the proxy, from ``bus.emit`` to a line in the log.

    .venv/bin/python bench/events_bench.py                 # 60 requests' events, 5 rounds
    .venv/bin/python bench/events_bench.py --requests 200

The events are the ones real requests emit: load_bench's sessions (the real Claude Code request, real
source code as tool output) sent in-process through ``lifecycle.send`` and ``complete`` with the
claude-code profile (memory off), captured from the bus. They are then published again on a fresh
``EventBus`` with a ``JsonlLog`` subscribed, the way the proxy does it: between two events the emitting
thread works (a pure-Python loop, as the event loop and the stages do), so the log's writer is idle
when an event comes and must be woken for it, and it competes for the interpreter lock with a busy
thread (switch interval 1 ms, as ``pipeline.switch_interval_ms``).

Printed, per request (its ~17 events), best of the rounds: the process CPU of the event path (the run
with the log minus the same run with a subscriber that does nothing: emitting, waking the writer,
scrubbing, serialising, writing), the emitting thread's share, and the writer thread's CPU; then the
same for a burst (all events at once, the writer never idle). The baseline measured in the same run is
``orjson.dumps`` of the same events' raw data (no scrubbing, no thread, no file): the ratio to it is
the figure to compare across machines and commits. Last, the terminal log's redaction (outputguard's
``_Redacting``) of mitmproxy's one line a request ("Streaming response from ..."), against the same
baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import orjson  # noqa: E402

from contextwarden.events import EventBus, JsonlLog  # noqa: E402

BUSY = 200  # iterations of the pure-Python loop between two events (~10-20 us)


def capture(n: int, sessions: int, warm: int) -> tuple[list[tuple], int]:
    """The events of ``n`` real requests (after ``warm`` ones): (type, data, flow_id, session) as emitted,
    with the ``forward`` and ``response`` events the interceptor and the observer emit."""
    import load_bench as lb

    from contextwarden import lifecycle
    from contextwarden.models.base import ApiKind
    from contextwarden.runtime import Runtime
    from contextwarden.settings import load_settings
    from contextwarden.streams.turn import Usage

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
        s.advance(('"type":"tool_use","id":"%s"' % tid).encode())
    rt.close()
    return [(e.type, e.data, e.flow_id, e.session) for e in seen[start:]], n


def _busy(k: int) -> int:
    x = 0
    for j in range(k):
        x += j * j
    return x


def _thread_cpu(t) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(t.ident))


def run(events: list[tuple], n: int, *, log: bool, paced: bool) -> dict[str, float]:
    """Publish every event on a fresh bus; the process, emitting-thread and writer CPU, ms per request."""
    directory = Path(tempfile.mkdtemp(prefix="cw-events-bench-log-"))
    bus = EventBus()
    sink = JsonlLog(directory) if log else None
    bus.subscribe(sink if sink is not None else (lambda ev: None))
    emit = bus.emit
    busy = BUSY if paced else 0
    p0, t0 = time.process_time(), time.thread_time()
    w0 = _thread_cpu(sink._thread) if sink is not None else 0.0
    for type_, data, flow_id, session in events:
        emit(type_, data, flow_id=flow_id, session=session)
        if busy:
            _busy(busy)
    if sink is not None:
        w1 = _thread_cpu(sink._thread)  # (before close: the thread is gone after it)
        while not sink._q.empty():  # written: the writer took everything (its last write is in w1 or not)
            time.sleep(0.0005)
        time.sleep(0.002)
        w1 = _thread_cpu(sink._thread)
        sink.close()
        size = (directory / "events.jsonl").stat().st_size
        assert size > 0
    else:
        w1 = 0.0
    p1, t1 = time.process_time(), time.thread_time()
    return {"process": (p1 - p0) * 1000 / n, "emitter": (t1 - t0) * 1000 / n, "writer": (w1 - w0) * 1000 / n}


def floor(events: list[tuple], n: int) -> float:
    """Baseline: orjson.dumps of each event's raw data, ms per request."""
    c0 = time.process_time()
    for type_, data, flow_id, session in events:
        orjson.dumps({"type": type_, "flow_id": flow_id, "session": session, "data": data}, default=str)
    return (time.process_time() - c0) * 1000 / n


def terminal(n: int) -> float:
    """outputguard's redaction of mitmproxy's line a request, ms per request (each line is new)."""
    import io

    from addons.outputguard import _Redacting

    out = _Redacting(io.StringIO())
    lines = [f"[03:21:{i % 60:02d}.{i % 1000:03d}][127.0.0.1:{30000 + i % 30000}] Streaming response from 127.0.0.1.\n"
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
    for _ in range(a.rounds):
        floors.append(floor(events, n))
        for mode in ("paced", "burst"):
            bare = run(events, n, log=False, paced=mode == "paced")
            full = run(events, n, log=True, paced=mode == "paced")
            rows[mode].append({"path": full["process"] - bare["process"], "emit": full["emitter"] - bare["emitter"],
                               "writer": full["writer"]})
        terms.append(terminal(n))
    base = min(floors)
    print(f"\nbaseline (orjson.dumps of the raw data): {base * 1000:.1f} us a request\n")
    print(f"| {'mode':<6} | {'event path us/req':>17} | {'ratio':>6} | {'emitting thread':>15} | {'writer thread':>13} |")
    print(f"|{'-' * 8}|{'-' * 19}|{'-' * 8}|{'-' * 17}|{'-' * 15}|")
    for mode, rs in rows.items():
        best = min(rs, key=lambda r: r["path"])
        print(f"| {mode:<6} | {best['path'] * 1000:>17.1f} | {best['path'] / base:>6.2f} | "
              f"{best['emit'] * 1000:>15.1f} | {best['writer'] * 1000:>13.1f} |")
    print(f"\nmedians of the rounds, us/req: paced {statistics.median(r['path'] for r in rows['paced']) * 1000:.1f}, "
          f"burst {statistics.median(r['path'] for r in rows['burst']) * 1000:.1f}")
    t = min(terms)
    print(f"terminal log line (outputguard): {t * 1000:.1f} us a request, ratio {t / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
