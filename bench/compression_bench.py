"""Compression stage time: a 100 KB tool output at first sight, and re-applying it, against baselines
measured in the same run.

    .venv/bin/python bench/compression_bench.py            # 40 rounds per case
    .venv/bin/python bench/compression_bench.py --rounds 200
    .venv/bin/python bench/compression_bench.py --memory inline   # memory's keeper thread in this process

Cases, each timed around the stage hook alone (``cw_request`` on a request the pipeline prepared), on a
Claude-Code-like conversation of 20 tool calls whose newest result is a ~100 KB output (a build log, a
failing pytest run, a JSON API response, a recursive grep; a new text every round, so no token count is
cached). Memory runs as in the proxy (``memory.process: separate``, its own process): handing the whole
output over is a socket write here, and redacting and storing it takes no CPU from this process.

- ``compress first sight``: the compression stage deciding (compressor, token count of the compressed
  text, the whole output handed to memory, the clearing record and the session version stored);
- ``  of which state writes``: the three SQLite transactions of that decision alone (the clearing record,
  the session's control record and its version list), on a fresh session each round;
- ``clearing re-apply (compressed)``: the next request, where clearing's step 1 puts the compression
  record back (the compression stage's own call on that request is timed too: it has nothing to do);
- ``clearing re-apply (stub)``: the baseline, the same conversation with a clearing stub on that result;
- ``tiktoken count of the output``: a yardstick independent of the machine's load, tokenising the same
  output once (what any stage that counts a new result pays).

Each is given as wall time and as CPU time of the calling thread (``time.thread_time``: what the stage
costs a core, whatever else the machine runs; wall time on a loaded 2-core machine is several times
that). Printed: p50 / p95 in ms and ratios to the baselines. Targets: first sight ≤ 10 ms p50 on a quiet
core, and a compressed result's re-apply no costlier than a stub's (ratio ≤ ~1).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CONTEXTWARDEN_SHARED", ROOT.parent / "shared"))
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from contextwarden.memory import service as memory_service  # noqa: E402
from contextwarden.models.base import ApiKind  # noqa: E402
from contextwarden.plugins import clearing, compression  # noqa: E402
from contextwarden.request import lifecycle  # noqa: E402
from tests.support import tool_outputs as T  # noqa: E402
from tests.support.stages import Harness, settings_overrides  # noqa: E402

HDRS = [("content-type", "application/json"), ("x-api-key", "sk-bench")]


def outputs() -> dict[str, str]:
    return {"build log": T.build_log()[0][:100_000], "pytest": T.failing_pytest(2000)[0][:100_000],
            "json": T.api_json(160)[0], "grep": T.recursive_grep(260)[0][:100_000], "distinct build log": T.cargo_build()[0],
            "web page": T.docs_page()}


def conversation(session: str, big: str, extra: bool) -> dict:
    msgs: list[dict] = [{"role": "user", "content": [{"type": "text", "text": f"Task {session}: fix the failing build."}]}]
    for i in range(20):
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": f"Step {i}."},
                                                      {"type": "tool_use", "id": f"toolu_{i}", "name": "Bash",
                                                       "input": {"command": f"cat src/file_{i}.c"}}]})
        msgs.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i}",
                                                  "content": f"int f{i}(void) {{ return {i}; }}\n" * 40}]})
    msgs.append({"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_big", "name": "Bash", "input": {"command": "make -j8"}}]})
    msgs.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_big", "content": big}]})
    if extra:  # the next request: the model has answered
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": "Found the error."},
                                                      {"type": "tool_use", "id": "toolu_next", "name": "Bash", "input": {"command": "ls"}}]})
        msgs.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_next", "content": "a.c"}]})
    return {"model": "claude-sonnet-4-5", "max_tokens": 1024, "system": [{"type": "text", "text": "You are an agent."}],
            "messages": msgs}


def ctx_for(h: Harness, body: dict, n: int):
    # prepared and counted as the pipeline does before the stages run (untimed)
    return lifecycle.admit(h.rt, lifecycle.Incoming(ApiKind.ANTHROPIC, "api.anthropic.com", "/v1/messages", HDRS,
                                                    orjson.dumps(body), f"bench-{n}"))


def timed(fn, ctx) -> tuple[float, float]:
    """(wall ms, CPU ms of this thread)."""
    t, c = time.perf_counter(), time.thread_time()
    fn(ctx)
    return (time.perf_counter() - t) * 1000, (time.thread_time() - c) * 1000


def state_writes(h: Harness, key: str, rec: dict) -> None:
    """What a compression decision writes: the clearing record, then the session's version (two
    transactions: the control record and the version list)."""
    from contextwarden.sessionctl import ledger

    clearing.remember(clearing.state_cache(h.rt), key, {"toolu_big": rec})
    ledger.append_version(h.rt, key, {"kind": "decision", "stage": clearing.NS, "trigger": "compression",
                                      "tokens_before": rec["tokens"], "tokens_after": rec["stub_tokens"],
                                      "tool_ids": ["toolu_big"], "refs": ["toolu_big"]})


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--memory", choices=("separate", "inline"), default="separate",
                    help="memory.process (the proxy's is separate)")
    a = ap.parse_args(argv)
    names = ("compress first sight", "  of which state writes", "compression call, next request",
             "clearing re-apply (compressed)", "clearing re-apply (stub)", "tiktoken count of the output")
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}

    kinds: dict[str, list[tuple[float, float]]] = {}  # first sight, by output

    def add(name: str, got: tuple[float, float]) -> None:
        wall[name].append(got[0])
        cpu[name].append(got[1])

    with tempfile.TemporaryDirectory(prefix="cw-compress-bench-") as home:
        h = Harness(Path(home), overrides=settings_overrides(
            stages=["clearing", "compression"], clearing={"trigger_tokens": 500_000},
            compression={"enabled": True}, memory={"enabled": True, "process": a.memory}))
        svc = memory_service.get_service(h.rt)  # loading in the background: wait, so it takes no CPU from the timings
        if svc is None or not svc.wait_ready(300):
            print("memory is not available: the stage compresses nothing without it", file=sys.stderr)
            return 1
        enc = h.rt.tokens
        texts = outputs()
        n = 0
        for r in range(a.rounds):
            for name, big in texts.items():
                n += 1
                # a new text each round, so nothing is cached (JSON stays JSON: a first key is added)
                big = f'{{"run": {r}, ' + big[1:] if name == "json" else f"{name} run {r}\n" + big
                session = f"{name}-{r}"
                first = conversation(session, big, False)
                ctx = ctx_for(h, first, n)
                got = timed(compression.cw_request, ctx)
                add("compress first sight", got)
                kinds.setdefault(name, []).append(got)
                rec = (clearing.state_cache(h.rt).get(clearing.NS, clearing.session_key(ctx)) or {}).get("toolu_big")
                if rec is None or rec.get("kind") != clearing.COMPRESSED:
                    print(f"{name}: not compressed", file=sys.stderr)
                    return 1
                add("  of which state writes", timed(lambda k: state_writes(h, k, rec), f"{session}-writes"))
                # a machine-independent yardstick: tokenising the output once (what any stage that counts it pays)
                add("tiktoken count of the output", timed(lambda t: enc.count_text(t + "."), big))
                nxt = conversation(session, big, True)
                ctx = ctx_for(h, nxt, n)
                add("clearing re-apply (compressed)", timed(clearing.cw_request, ctx))
                add("compression call, next request", timed(compression.cw_request, ctx))
                # the baseline: the same conversation in another session, its result cleared to a stub
                base = conversation(session + "-stub", big, True)
                cctx = ctx_for(h, base, n)
                key = clearing.session_key(cctx)
                stub = clearing.stub_text("Bash", {"command": "make -j8"}, big, 25_000, 0)
                clearing.remember(clearing.state_cache(h.rt), key, {"toolu_big": {
                    "h": clearing._digest(big), "stub": stub, "tokens": 25_000, "stub_tokens": 80, "tool": "Bash",
                    "mid": "m-0000000000000000"}})
                add("clearing re-apply (stub)", timed(clearing.cw_request, cctx))
        h.close()
    print(report(wall, cpu, a.rounds * len(texts), a.memory))
    print("first sight by output, CPU p50 / p95 ms: " + "; ".join(
        f"{k} {statistics.median(c for _, c in v):.1f} / {sorted(c for _, c in v)[int(0.95 * (len(v) - 1))]:.1f}"
        for k, v in kinds.items()))
    print(f"~100 KB outputs ({', '.join(texts)}); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


def report(wall: dict[str, list[float]], cpu: dict[str, list[float]], n: int, memory: str) -> str:
    def p(ts: list[float], q: float) -> float:
        ts = sorted(ts)
        return statistics.median(ts) if q == 0.5 else ts[int(q * (len(ts) - 1))]

    out = [f"{n} samples per case, memory process {memory}",
           f"{'case':34} {'wall p50':>9} {'wall p95':>9} {'CPU p50':>8} {'CPU p95':>8} {'CPU x stub re-apply':>20} {'CPU x tiktoken count':>21}"]
    stub = p(cpu["clearing re-apply (stub)"], 0.5) or 1e-9
    tik = p(cpu["tiktoken count of the output"], 0.5) or 1e-9
    for name in wall:
        c50 = p(cpu[name], 0.5)
        out.append(f"{name:34} {p(wall[name], 0.5):9.2f} {p(wall[name], 0.95):9.2f} {c50:8.2f} {p(cpu[name], 0.95):8.2f} "
                   f"{c50 / stub:20.2f} {c50 / tik:21.2f}")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
