"""Recall by id through the running proxy's local API: p50 / p99 with N stored originals.

    .venv/bin/python bench/recall_bench.py                 # 100,000 originals, 1,000 recalls
    .venv/bin/python bench/recall_bench.py -n 20000 --calls 500

A real runtime (default profile, memory on, cw_home in a temp dir) with ``N`` originals kept whole
(texts of 200-4,000 characters, two tenants), the real recall API on 127.0.0.1 (token, tenant from the
credential) and the real client (one kept-alive HTTP connection, as ``contextwarden mcp`` holds).
Each call recalls one random id of tenant A; every answer is checked to be the exact text. Also timed:
the same recall of tenant B's credential (finds nothing), and ``contextwarden recall ID`` as a process
(Python start-up included).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CONTEXTWARDEN_SHARED", ROOT.parent / "shared")).resolve()
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))
os.environ.setdefault("CONTEXTWARDEN_MEMORY__MODEL_DIR", str(SHARED / "models" / "all-MiniLM-L6-v2" / "onnx"))
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from contextwarden.core.runtime import Runtime  # noqa: E402
from contextwarden.memory import service as memory_service  # noqa: E402
from contextwarden.memory.api import RecallApi, RecallClient  # noqa: E402
from contextwarden.memory.items import MemoryItem  # noqa: E402
from contextwarden.util.redact import tenant_id  # noqa: E402

KEY_A, KEY_B = "sk-bench-a", "sk-bench-b"
WORDS = "alpha beta gamma delta parser config value return function module error handler request token cache".split()


def text(rng: random.Random, k: int) -> str:
    n = rng.randint(30, 600)
    return f"item {k}: " + " ".join(rng.choice(WORDS) + str(rng.randint(0, 999)) for _ in range(n))


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=100_000, help="originals stored")
    ap.add_argument("--calls", type=int, default=1000)
    args = ap.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        rt = Runtime.from_profile("default", home, log=False)
        svc = memory_service.get_service(rt)
        svc.wait_ready(120)
        ta, tb = tenant_id(KEY_A, rt.salt), tenant_id(KEY_B, rt.salt)
        t0 = time.perf_counter()
        ids: list[tuple[str, str]] = []
        batch = []
        for k in range(args.n):
            it = MemoryItem(text=text(rng, k), session=f"s{k % 50}", tenant=ta if k % 2 == 0 else tb, turn=k,
                            role="tool", kind="tool_result", tool="Bash")
            batch.append(it)
            if k % 2 == 0:
                ids.append((it.memory_id, it.text))
            if len(batch) >= 5000:
                svc.originals.put(batch)
                batch = []
        svc.originals.put(batch)
        fill = time.perf_counter() - t0
        api = RecallApi(rt, lambda: svc).start()
        a, b = RecallClient.find(home, KEY_A), RecallClient.find(home, KEY_B)
        for mid, _ in ids[:20]:  # warm the connection
            a.call("recall", ids=[mid])
        times, times_b = [], []
        for _ in range(args.calls):
            mid, want = rng.choice(ids)
            t = time.perf_counter()
            got = a.call("recall", ids=[mid])
            times.append((time.perf_counter() - t) * 1000)
            assert got["items"][0]["text"] == want
            t = time.perf_counter()
            assert b.call("recall", ids=[mid])["items"] == []
            times_b.append((time.perf_counter() - t) * 1000)
        cli = []
        exe = str(Path(sys.executable).parent / "contextwarden")
        for _ in range(5):
            mid, want = rng.choice(ids)
            t = time.perf_counter()
            out = subprocess.run([exe, "recall", mid, "--home", str(home), "--api-key", KEY_A], capture_output=True, text=True)
            cli.append((time.perf_counter() - t) * 1000)
            assert out.stdout.rstrip("\n") == want
        load = os.getloadavg()[0]
        print(f"{svc.originals.count():,} originals stored in {fill:.1f} s; load average {load:.1f}")
        print(f"recall through the API (tenant A, found):   p50 {statistics.median(times):.2f} ms  p99 {pct(times, 0.99):.2f} ms  (n={len(times)})")
        print(f"recall through the API (tenant B, nothing): p50 {statistics.median(times_b):.2f} ms  p99 {pct(times_b, 0.99):.2f} ms")
        print(f"`contextwarden recall ID` as a process:     p50 {statistics.median(cli):.0f} ms (Python start-up included, n={len(cli)})")
        a.close()
        b.close()
        api.stop()
        rt.close()


if __name__ == "__main__":
    main()
