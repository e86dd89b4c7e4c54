"""What a shared state costs a request: the same sessions through the pipeline (clearing and
compaction, the claude-code thresholds on a 16K window, as tests/e2e/test_gateway.py) with the state
in SQLite (one proxy) and in Redis (a real redis-server on loopback), the two taking turns.

    .venv/bin/python bench/state_backend_bench.py [--sessions 6] [--requests 14]

Prints the per-request pipeline time (median, p90) of each backend and the paired difference, and
checks that both sent the same bytes.
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
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(ROOT.parent / "shared" / "tiktoken"))

import orjson  # noqa: E402

from contextwarden.models.base import ApiKind  # noqa: E402
from contextwarden.request import lifecycle  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402
from tests.support.stages import Harness, anthropic_tool_loop  # noqa: E402

SETTINGS = {"tokens": {"context_window": 16000, "calibrate": False}, "memory": {"enabled": False},
            "pipeline": {"order": ["clearing", "compaction"], "disabled": ["budget", "strip", "tagging", "memory"],
                         "stage_budget_ms": 20_000},  # (a loaded machine must not time a stage out)
            "clearing": {"enabled": True, "trigger_tokens": 7000, "keep_recent": 4, "clear_at_least": 1500, "min_result_tokens": 200},
            "compaction": {"enabled": True, "summariser": "extractive", "soft_threshold": 0.45, "hard_threshold": 0.5,
                           "target": 0.4, "protect_recent_turns": 2, "min_span_tokens": 1000}}


def timed_send(h: Harness, body: bytes, n: int) -> tuple[float, bytes]:
    rt = h.rt
    hdrs = [("content-type", "application/json"), ("x-api-key", "sk-bench")]
    t0 = time.perf_counter()
    _, out = lifecycle.send(rt, ApiKind.ANTHROPIC, "api.anthropic.com", "/v1/messages", hdrs, body, f"flow-{n}")
    ms = (time.perf_counter() - t0) * 1000
    return ms, out.body if out.body is not None else body


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=6)
    ap.add_argument("--requests", type=int, default=14)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cw-state-bench-"))
    with RedisServer(tmp) as rs:
        hs = {"sqlite": Harness(tmp / "sqlite", "claude-code", SETTINGS),
              "redis": Harness(tmp / "redis", "claude-code", {**SETTINGS, "state": {"url": rs.url}})}
        times: dict[str, list[float]] = {k: [] for k in hs}
        paired: list[float] = []
        k = 0
        for s in range(args.sessions):
            for n in range(1, args.requests + 1):
                body = orjson.dumps(anthropic_tool_loop(n, result_words=300, session=f"bench-{s}"))
                sent = {}
                order = list(hs) if (s + n) % 2 else list(reversed(hs))
                for name in order:
                    k += 1
                    ms, sent[name] = timed_send(hs[name], body, k)
                    times[name].append(ms)
                assert sent["sqlite"] == sent["redis"], f"session {s} request {n}: the backends sent different bytes"
                paired.append(times["redis"][-1] - times["sqlite"][-1])
        for h in hs.values():
            h.close()
    print(f"{args.sessions} sessions x {args.requests} requests, same bytes from both backends")
    print("| backend | median ms | p90 ms |\n| --- | ---: | ---: |")
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=10)
        print(f"| {name} | {statistics.median(ts):.2f} | {q[8]:.2f} |")
    print(f"paired difference (redis - sqlite), median: {statistics.median(paired):+.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
