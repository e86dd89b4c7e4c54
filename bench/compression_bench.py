"""Compression stage time: a 100 KB tool output at first sight, and re-applying it, against a clearing
re-apply measured in the same run.

    .venv/bin/python bench/compression_bench.py            # 40 rounds per case
    .venv/bin/python bench/compression_bench.py --rounds 200

Cases, each timed around the stage hook alone (``cw_request`` on a request the pipeline prepared), on a
Claude-Code-like conversation of 20 tool calls whose newest result is a ~100 KB output (a build log, a
failing pytest run, a JSON API response, a recursive grep; a new text every round, so no token count is
cached):

- ``compress first sight``: the compression stage deciding (compressor, token counts, record stored);
- ``clearing re-apply (compressed)``: the next request, where clearing's step 1 puts the compression
  record back (the compression stage's own call on that request is timed too: it has nothing to do);
- ``clearing re-apply (stub)``: the baseline, the same conversation with a clearing stub on that result.

- ``tiktoken count of the output``: a yardstick independent of the machine's load, tokenising the
  same output once (what any stage that counts a new result pays; ~10 ms for 100 KB on a quiet core).

Prints p50 / p95 in ms and the ratios to the baselines; the targets are first sight ≤ 10 ms p50 on a quiet
machine and a compressed result's re-apply no costlier than a stub's (ratio ≤ ~1).
"""

from __future__ import annotations

import argparse
import copy
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
from contextwarden import lifecycle  # noqa: E402
from contextwarden.plugins import clearing, compression  # noqa: E402
from tests.support import tool_outputs as T  # noqa: E402
from tests.support.stages import Harness, settings_overrides  # noqa: E402

HDRS = [("content-type", "application/json"), ("x-api-key", "sk-bench")]


def outputs() -> dict[str, str]:
    return {"build log": T.build_log()[0][:100_000], "pytest": T.failing_pytest(2000)[0][:100_000],
            "json": T.api_json(160)[0], "grep": T.recursive_grep(260)[0][:100_000]}


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
    return lifecycle.admit(h.rt, f"bench-{n}", ApiKind.ANTHROPIC, "api.anthropic.com", "/v1/messages", HDRS,
                           orjson.dumps(body))


def timed(fn, ctx) -> float:
    t = time.perf_counter()
    fn(ctx)
    return (time.perf_counter() - t) * 1000


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cw-compress-bench-") as home:
        h = Harness(Path(home), overrides=settings_overrides(
            stages=["clearing", "compression"], clearing={"trigger_tokens": 500_000},
            compression={"enabled": True}, memory={"enabled": True, "process": "inline"}))
        svc = memory_service.get_service(h.rt)  # loading in the background: wait, so it takes no CPU from the timings
        if svc is not None:
            svc.wait_ready(300)
        times: dict[str, list[float]] = {"compress first sight": [], "compression call, next request": [],
                                         "clearing re-apply (compressed)": [], "clearing re-apply (stub)": [],
                                         "tiktoken count of the output": []}
        enc = h.rt.tokens
        texts = outputs()
        n = 0
        for r in range(a.rounds):
            for name, big in texts.items():
                n += 1
                big = f"{name} run {r}\n" + big  # a new text: nothing cached
                session = f"{name}-{r}"
                first = conversation(session, big, False)
                times["compress first sight"].append(timed(compression.cw_request, ctx_for(h, first, n)))
                # a machine-independent yardstick: tokenising the output once (what any stage that counts it pays)
                times["tiktoken count of the output"].append(timed(lambda t: enc.count_text(t + "."), big))
                nxt = conversation(session, big, True)
                ctx = ctx_for(h, nxt, n)
                times["clearing re-apply (compressed)"].append(timed(clearing.cw_request, ctx))
                times["compression call, next request"].append(timed(compression.cw_request, ctx))
                # the baseline: the same conversation in another session, its result cleared to a stub
                base = conversation(session + "-stub", big, True)
                cctx = ctx_for(h, base, n)
                key = clearing.session_key(cctx)
                text = big
                stub = clearing.stub_text("Bash", {"command": "make -j8"}, text, 25_000, 0)
                clearing.remember(clearing.state_cache(h.rt), key, {"toolu_big": {
                    "h": clearing._digest(text), "stub": stub, "tokens": 25_000, "stub_tokens": 80, "tool": "Bash",
                    "mid": "m-0000000000000000"}})
                times["clearing re-apply (stub)"].append(timed(clearing.cw_request, cctx))
        h.close()
    base = statistics.median(times["clearing re-apply (stub)"])
    tik = statistics.median(times["tiktoken count of the output"])
    print(f"{'case':34} {'p50 ms':>8} {'p95 ms':>8} {'x clearing re-apply':>20} {'x tiktoken count':>17}")
    for name, ts in times.items():
        ts = sorted(ts)
        p50, p95 = statistics.median(ts), ts[int(0.95 * (len(ts) - 1))]
        print(f"{name:34} {p50:8.2f} {p95:8.2f} {p50 / base:20.2f} {p50 / tik:17.2f}")
    print(f"\n{len(times['compress first sight'])} rounds per case, ~100 KB outputs ({', '.join(texts)}); "
          f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
