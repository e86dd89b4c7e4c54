"""CPU of each request's way in, in-process, on the load benchmark's workload: where the engine's CPU goes.

    .venv/bin/python bench/stage_cpu.py                       # 50 sessions x 40 steps, as load_bench's
    .venv/bin/python bench/stage_cpu.py --sessions 10 --steps 20 --top 30

The sessions of ``bench/load_bench.py`` (the real Claude Code request, ~3K tokens of this repository's
code a step, a person's message every 8th step) are sent one step of every session after another
through ``lifecycle.send`` with the claude-code profile, memory and compression in their own processes
as in the proxy, and the stages run on the calling thread, so that each request's thread CPU is its
own and cProfile sees all of it. Printed: CPU per request (p50, p90, mean) of the requests that made
a clearing step, of those with a long history (over ``--long`` tokens) and of the others, and the
functions each kind spent it in (cumulative, or ``--sort tottime``). Unlike the load benchmark's timings, it does not depend
on how busy the machine is (waits for the memory and compression processes show as time, not CPU).

This is what found that every request between clearing's trigger and its next step computed ~8 stubs
no step took (issue 19): 22.2 -> 15.6 ms of CPU a request once fixed.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
import uuid
from concurrent.futures import Future
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(ROOT.parent / "shared" / "tiktoken"))

from load_bench import Session, claude_code_request, corpus  # noqa: E402

from contextwarden.models.base import ApiKind  # noqa: E402
from contextwarden.request import lifecycle  # noqa: E402
from tests.support.stages import Harness  # noqa: E402


class CallerThread:
    """The stage pool's interface, running each call on the calling thread (one thread's CPU a request)."""

    def submit(self, fn, *a, **k) -> Future:
        f: Future = Future()
        try:
            f.set_result(fn(*a, **k))
        except BaseException as e:  # (handed on, as a pool's future would)
            f.set_exception(e)
        return f

    def shutdown(self, *a, **k) -> None:
        pass


def pct(xs: list[float], p: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(len(xs) * p))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--steps", type=int, default=40, help="requests per session")
    ap.add_argument("--step-tokens", type=int, default=3000)
    ap.add_argument("--long", type=int, default=110_000, help="tokens over which a request counts as long")
    ap.add_argument("--top", type=int, default=25, help="functions printed per kind (0: none)")
    ap.add_argument("--sort", default="cumulative", choices=("cumulative", "tottime"),
                    help="order of the functions printed (tottime: each function's own time, waits for the other processes included)")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="cw-stage-cpu-"))
    h = Harness(home, "claude-code", {"memory": {"process": "separate"}, "compression": {"process": "separate"},
                                      "pipeline": {"stage_budget_ms": 20_000}})
    try:
        rt = h.rt
        from contextwarden.memory import service

        svc = service.get_service(rt)
        if svc is not None and not svc.wait_ready(180):
            print("the memory process did not get ready", file=sys.stderr)
        rt.stage_pool = CallerThread()
        base, hdrs = claude_code_request()
        code = corpus()
        sessions = [Session(k, base, hdrs, code, args.step_tokens * 4, 150_000 * 4) for k in range(args.sessions)]
        loop = asyncio.new_event_loop()
        kinds: dict[str, list[float]] = {"clearing step": [], "long history": [], "other": []}
        stats: dict[str, pstats.Stats | None] = dict.fromkeys(kinds)
        n = 0
        t0 = time.monotonic()
        for _ in range(args.steps):
            for s in sessions:
                pr = cProfile.Profile()
                c0 = time.thread_time()
                pr.enable()
                ctx, _ = lifecycle.send(rt, ApiKind.ANTHROPIC, "api.anthropic.com", "/v1/messages",
                                        list(s.headers(uuid.uuid4().hex).items()), s.body(), f"f{n}", loop=loop)
                pr.disable()
                cpu = (time.thread_time() - c0) * 1000
                n += 1
                s.advance(f'"type":"tool_use","id":"toolu_{uuid.uuid4().hex[:16]}"'.encode())
                if any(c.get("new") and not c.get("compressed") for c in ctx.notes.get("cleared") or ()):
                    kind = "clearing step"
                elif (ctx.tokens_in or 0) > args.long:
                    kind = "long history"
                else:
                    kind = "other"
                kinds[kind].append(cpu)
                st = stats[kind]
                if st is None:
                    stats[kind] = pstats.Stats(pr)
                else:
                    st.add(pr)
        every = [x for xs in kinds.values() for x in xs]
        print(f"{n} requests ({args.sessions} sessions x {args.steps} steps) in {time.monotonic() - t0:.0f} s; "
              f"CPU a request: mean {sum(every) / len(every):.2f} ms, p50 {pct(every, .5):.2f}, p90 {pct(every, .9):.2f}")
        for kind, xs in kinds.items():
            if xs:
                print(f"  {kind:14s} {len(xs):5d} requests: p50 {pct(xs, .5):6.2f} ms, p90 {pct(xs, .9):6.2f}, "
                      f"mean {sum(xs) / len(xs):6.2f}")
        if args.top:
            for kind, st in stats.items():
                if st is None:
                    continue
                out = io.StringIO()
                st.stream = out
                st.sort_stats(args.sort).print_stats(args.top)
                print(f"\n== {kind} ({args.sort} seconds over all its requests)")
                print(out.getvalue().split("\n\n", 1)[-1].rstrip())
    finally:
        h.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
