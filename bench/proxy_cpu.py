"""CPU time per request of the proxy process, on a fixed workload: plain mitmdump against contextwarden.

    nice .venv/bin/python bench/proxy_cpu.py                      # 10 sessions x 40 steps each
    .venv/bin/python bench/proxy_cpu.py --sessions 5 --steps 20 --py-spy /tmp/cw   # + GIL profiles

The load benchmark (bench/load_bench.py) runs for a time, so how far the histories grow depends on how
fast the machine is: its CPU per request is not comparable between two runs on a shared machine. Here
every session plays exactly ``--steps`` steps of the same Claude Code tool loop (load_bench.Session:
real source code as tool output, ~3K tokens a step, a message a person wrote every 8th step), so both
proxies see the same requests, and the figure (process CPU seconds / requests) barely depends on what
else the machine is doing. ``--py-spy DIR`` records each proxy with py-spy (``--gil``: only the thread
holding the interpreter lock, i.e. where its CPU goes; collapsed stacks in DIR/plain.txt, DIR/cw.txt).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx  # noqa: E402
from load_bench import Session, claude_code_request, corpus, cpu_s, kids_cpu, start_py_spy, thread_cpu  # noqa: E402
from proxy_latency import ProxyProcess, StandIn  # noqa: E402


def thread_names(spy_file: Path | None) -> dict[int, str]:
    """OS thread id -> Python thread name, from a py-spy record's stacks ("thread (TID): NAME")."""
    names = {}
    if spy_file is not None and spy_file.exists():
        for m in re.finditer(r"thread \((?:0x)?(\d+)\): ([^;]+);", spy_file.read_text()):
            names[int(m.group(1))] = m.group(2)
    return names


async def play(url: str, sessions: list[Session], steps: int) -> tuple[int, int]:
    """Every session plays ``steps`` requests; returns (completed, errors)."""
    done = [0, 0]

    async def one(s: Session) -> None:
        async with httpx.AsyncClient(timeout=180, trust_env=False) as c:
            for _ in range(steps):
                try:
                    r = await c.post(url + "/v1/messages", content=s.body(), headers=s.headers("x"))
                except Exception:
                    done[1] += 1
                    continue
                if r.status_code != 200:
                    done[1] += 1
                    continue
                done[0] += 1
                s.advance(r.content)

    await asyncio.gather(*(one(s) for s in sessions))
    return done[0], done[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--steps", type=int, default=40, help="requests per session")
    ap.add_argument("--step-tokens", type=int, default=3000)
    ap.add_argument("--profile", default="claude-code")
    ap.add_argument("--no-plain", action="store_true", help="contextwarden only")
    ap.add_argument("--py-spy", default=None, metavar="DIR", help="py-spy --gil records of each proxy into DIR")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a proxy setting for the run")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="a mitmproxy option for contextwarden's proxy (e.g. cw_flow_lines=true)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    base, hdrs = claude_code_request()
    code = corpus()
    step_chars = args.step_tokens * 4

    def sessions() -> list[Session]:
        return [Session(k, base, hdrs, code, step_chars, 10**9) for k in range(args.sessions)]

    standin = StandIn(sse_delay=0.0)
    standin.planner = lambda api, body: ("I'll read the next file.", ("Bash", {"command": "cat next.py"}))
    standin._record = lambda rec: None
    standin.start()
    work = Path(tempfile.mkdtemp(prefix="cw-cpu-"))
    spy_dir = Path(args.py_spy) if args.py_spy else None
    if spy_dir:
        spy_dir.mkdir(parents=True, exist_ok=True)
    out: dict = {"sessions": args.sessions, "steps": args.steps}
    try:
        runs = [] if args.no_plain else [("plain", dict(profile=None, script=None,
                                                         options={"stream_large_bodies": "1"}))]
        env = {"CONTEXTWARDEN_" + "__".join(k.upper().split(".")): v for k, v in (kv.split("=", 1) for kv in args.set)}
        runs.append(("cw", dict(profile=args.profile, env=env or None, ready_events=("startup", "memory_status"),
                                options=dict(kv.split("=", 1) for kv in args.option) or None, startup_timeout=300)))
        for name, kw in runs:
            pp = ProxyProcess(work / name, reverse=standin.url, name=name, **kw)
            pp.start()
            mem = None
            if name == "cw":
                evs = pp.events("memory_process", wait=10)
                mem = evs[-1]["data"]["pid"] if evs else None
                time.sleep(2)  # start-up work settles
            spy = start_py_spy(pp.proc.pid, spy_dir / f"{name}.txt", 3600, gil=True) if spy_dir else None
            th0 = thread_cpu(pp.proc.pid)
            w0 = kids_cpu(pp.proc.pid, mem)  # the compression workers
            mw0 = kids_cpu(mem)  # memory's embedding worker
            c0, m0, t0 = cpu_s(pp.proc.pid), cpu_s(mem), time.monotonic()
            ok, errors = asyncio.run(play(pp.url, sessions(), args.steps))
            c1, m1, secs = cpu_s(pp.proc.pid), cpu_s(mem), time.monotonic() - t0
            th1 = thread_cpu(pp.proc.pid)
            w1 = kids_cpu(pp.proc.pid, mem)
            mw1 = kids_cpu(mem)
            if m1 is not None:  # (the memory process's figure includes its embedding worker's)
                m1 += sum(c - mw0.get(p, 0.0) for p, c in mw1.items())
            if spy is not None:
                spy.send_signal(2)  # SIGINT: py-spy writes what it has
                spy.wait(30)
            r = {"completed": ok, "errors": errors, "seconds": round(secs, 1),
                 "cpu_ms_per_request": round((c1 - c0) * 1000 / max(1, ok), 2)}
            if mem and m0 is not None and m1 is not None:  # (None: the memory process is gone)
                r["memory_cpu_ms_per_request"] = round((m1 - m0) * 1000 / max(1, ok), 2)
            if w1:  # (a worker started during the run counts from 0)
                r["workers_cpu_ms_per_request"] = round(sum(c - w0.get(p, 0.0) for p, c in w1.items()) * 1000 / max(1, ok), 2)
            # per thread: the event loop (the main thread) against the workers
            names = thread_names(spy_dir / f"{name}.txt" if spy_dir else None)
            by: dict[str, float] = {}
            for tid, (_, c) in th1.items():
                label = "event loop (main thread)" if tid == pp.proc.pid else re.sub(r"_\d+$", "_*", names.get(tid, "other"))
                by[label] = by.get(label, 0.0) + (c - th0.get(tid, ("", 0.0))[1])
            r["threads_cpu_ms_per_request"] = {k: round(v * 1000 / max(1, ok), 2)
                                               for k, v in sorted(by.items(), key=lambda x: -x[1]) if v > 0}
            out[name] = r
            print(f"{name:6} {ok} requests ({errors} errors) in {secs:.1f} s: proxy process CPU "
                  f"{r['cpu_ms_per_request']} ms/request"
                  + (f", memory process (and its embedding worker) {r['memory_cpu_ms_per_request']} ms/request" if "memory_cpu_ms_per_request" in r else "")
                  + (f", its other processes (compression workers) {r['workers_cpu_ms_per_request']} ms/request"
                     if "workers_cpu_ms_per_request" in r else ""), flush=True)
            print("   by thread (ms/request): " + ", ".join(f"{k} {v}" for k, v in r["threads_cpu_ms_per_request"].items()))
            pp.stop()
    finally:
        standin.stop()
    if "plain" in out and "cw" in out:
        print(f"contextwarden's own share: {out['cw']['cpu_ms_per_request'] - out['plain']['cpu_ms_per_request']:.2f} ms/request")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
