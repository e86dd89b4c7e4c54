"""Token counting and validation cost per request, by history size (real Claude Code history).

    .venv/bin/python bench/tokens_bench.py

Histories are rebuilt from the largest session in ../shared/eval/traces and cut at about 15K and 150K
tokens. "cold": a counter that has never seen the history; "warm": the same history seen before plus
one new tool round (what a proxy sees on every turn); the per-content cache makes it O(new messages).
"""

from __future__ import annotations

import copy
import os
import statistics
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CONTEXTWARDEN_SHARED", ROOT.parent / "shared"))
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))

from contextwarden.models import ApiKind  # noqa: E402
from contextwarden.offline.replay import load_claude_code  # noqa: E402
from contextwarden.settings import load_settings  # noqa: E402
from contextwarden.wire.dialects import validate_rewrite  # noqa: E402
from contextwarden.wire.tokens import TokenCounter  # noqa: E402

A = ApiKind.ANTHROPIC


def ms(fn, n=20):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1000)
    return statistics.median(ts)


def main() -> int:
    big = max((SHARED / "eval" / "traces").glob("*.jsonl"), key=lambda p: p.stat().st_size)
    c0 = TokenCounter(load_settings(None).tokens)
    reqs = [r for r in load_claude_code(big, c0).requests if r.kind == "request"]
    # the stand-in system prompt the replay adds is not history: measure messages only
    sized = [(c0.count_request(A, b), b) for b in ({"model": r.body["model"], "messages": r.body["messages"]} for r in reqs)]
    rows = [("history", "tokens", "messages", "count cold ms", "count warm +1 round ms", "same, pipeline keys ms",
             "validate ms", "validate, pipeline keys ms")]
    for target in (15_000, 150_000):
        tokens, body = min(sized, key=lambda x: abs(x[0] - target))
        nxt = copy.deepcopy(body)
        nxt["messages"].append({"role": "assistant", "content": [{"type": "tool_use", "id": "bench1", "name": "Read", "input": {"p": "x"}}]})
        nxt["messages"].append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "bench1", "content": "new output\n" * 50}]})

        def cold():
            TokenCounter(c0.settings).count_request(A, body)

        warm_c = TokenCounter(c0.settings)
        warm_c.count_request(A, body)

        def warm():
            warm_c.count_request(A, nxt)

        # the pipeline dumps each message once while parsing (ctx.message_raw) and keys its caches on those bytes
        raw_nxt = [orjson.dumps(m) for m in nxt["messages"]]
        raw_body = [orjson.dumps(m) for m in body["messages"]]
        warm_c.count_request(A, nxt, raw=raw_nxt)

        rows.append((f"~{target // 1000}K", f"{tokens:,}", str(len(body["messages"])), f"{ms(cold, 5):.1f}", f"{ms(warm):.2f}",
                     f"{ms(lambda: warm_c.count_request(A, nxt, raw=raw_nxt)):.2f}",
                     f"{ms(lambda: validate_rewrite(A, nxt, body)):.2f}",
                     f"{ms(lambda: validate_rewrite(A, nxt, body, original_raw=raw_body)):.2f}"))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  ".join(x.rjust(w[i]) for i, x in enumerate(r)))
        if j == 0:
            print("  ".join("-" * x for x in w))
    return 0


if __name__ == "__main__":
    sys.exit(main())
