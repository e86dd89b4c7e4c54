"""Memory searches while ingestion is busy, with and without searches-first (memory/priority.py).

    nice .venv/bin/python bench/search_priority.py                 # 4 rounds of 20 searches per mode
    .venv/bin/python bench/search_priority.py --rounds 2 --searches 10
    nice .venv/bin/python bench/search_priority.py --switch        # the interpreter's switch interval instead

One MemoryService as the memory process runs it (pending table, tagging, embedding in the background),
fed tool outputs of this repository's own source code (~12 KB each, as bench/load_bench.py's sessions
send them) faster than it can embed them, so its ingestion worker is always busy. Meanwhile a search
runs every 50 ms. The two modes take turns round by round (a shared machine's load hits both alike):
``first`` (the default: ingestion waits between its steps while a search runs) and ``off`` (it never
waits). Printed: search wall time p50/p90/max per mode, how many searches would have missed the memory
stage's 150 ms budget, and the items ingestion stored meanwhile (what searches-first costs it: lag).

``--switch`` compares the interpreter's switch interval instead (searches-first on in both): ``1ms``
(``pipeline.switch_interval_ms``, which the memory process applies) against ``5ms`` (Python's default).
A search's threads (the caller, the query pool's embedding) wait for the interpreter lock each time
ingestion's Python work (tagging, redaction, chunking) holds it, up to the interval each time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_bench import corpus  # noqa: E402
from proxy_latency import SHARED  # noqa: E402  (paths and offline assets)

os.environ.setdefault("CONTEXTWARDEN_MEMORY__MODEL_DIR", str(SHARED / "models" / "all-MiniLM-L6-v2" / "onnx"))

from contextwarden.core.events import EventBus  # noqa: E402
from contextwarden.memory.items import MemoryItem  # noqa: E402
from contextwarden.memory.retrieve import Query  # noqa: E402
from contextwarden.memory.server import _Runtime  # noqa: E402
from contextwarden.memory.service import MemoryService  # noqa: E402
from contextwarden.settings import load_settings  # noqa: E402

QUESTIONS = ["how is the memory service started", "where is the pending table drained",
             "what happens to a session's turns when the proxy stops", "how are stage budgets measured",
             "which events does the interceptor emit", "how does clearing choose what to clear"]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--searches", type=int, default=20, help="searches per round")
    ap.add_argument("--switch", action="store_true", help="compare switch intervals (1 ms, 5 ms) instead")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="cw-prio-"))
    settings = load_settings("claude-code", home)
    svc = MemoryService(_Runtime(settings, home, EventBus(recent=64)), background=False, separate=True)
    if svc.ingestor is None or not svc.wait_ready(300):
        print(f"memory unavailable: {svc.error}")
        return 1
    code = corpus()
    tenant = "t-bench"
    n = [0]

    def feed(stop: threading.Event) -> None:
        """Tool outputs faster than they can be embedded: the ingestion worker never idles."""
        while not stop.is_set():
            if svc.ingestor.pending < 8:
                k = n[0] = n[0] + 1
                s = (k * 12_011) % max(1, len(code) - 12_000)
                svc.submit([MemoryItem(text=code[s:s + 12_000], session=f"s{k % 5}", tenant=tenant, turn=k,
                                       role="tool", kind="tool_result", tool="Bash")])
            stop.wait(0.02)

    # something to find first
    svc.submit([MemoryItem(text=q + ": see src/contextwarden", session="s0", tenant=tenant, turn=0, role="user",
                           kind="message") for q in QUESTIONS])
    svc.flush(120)
    stop = threading.Event()
    feeder = threading.Thread(target=feed, args=(stop,), daemon=True)
    feeder.start()
    time.sleep(2)  # the worker is busy
    real_pause = svc.priority.pause
    modes = ("1ms", "5ms") if args.switch else ("first", "off")
    times: dict[str, list[float]] = {m: [] for m in modes}
    stored: dict[str, int] = {m: 0 for m in modes}
    spent: dict[str, float] = {m: 0.0 for m in modes}
    try:
        for r in range(args.rounds):
            for mode in (modes if r % 2 == 0 else modes[::-1]):
                if args.switch:
                    sys.setswitchinterval(0.001 if mode == "1ms" else 0.005)
                svc.priority.pause = real_pause if mode != "off" else (lambda: 0.0)
                if svc.embedder is not None:
                    svc.embedder.inner.pause = svc.priority.pause
                svc.store.pause = svc.priority.pause
                before, t0 = svc.ingestor.stats["stored"], time.monotonic()
                for i in range(args.searches):
                    q = QUESTIONS[(i + r) % len(QUESTIONS)] + f" ({r}.{i})"  # never the embedder's cache
                    t = time.perf_counter()
                    svc.search(Query(q), [tenant], session="s0")
                    times[mode].append((time.perf_counter() - t) * 1000)
                    time.sleep(0.05)
                stored[mode] += svc.ingestor.stats["stored"] - before
                spent[mode] += time.monotonic() - t0
    finally:
        stop.set()
        svc.priority.pause = real_pause
        svc.close()
    print(f"{args.rounds} rounds x {args.searches} searches per mode, ingestion always busy "
          f"(load average {os.getloadavg()[0]:.1f})")
    print(f"{'':8}{'p50 ms':>9}{'p90 ms':>9}{'max ms':>9}{'> 150 ms':>10}{'chunks stored/s':>17}")
    for mode, xs in times.items():
        print(f"{mode:8}{pct(xs, 50):>9.1f}{pct(xs, 90):>9.1f}{max(xs):>9.1f}{sum(1 for x in xs if x > 150):>10}"
              f"{stored[mode] / max(1e-9, spent[mode]):>17.1f}")
    print(f"ingestion waited {svc.priority.paused_s:.1f} s in {svc.priority.pauses} pauses for searches")
    sys.stdout.flush()
    os._exit(0)  # ONNX Runtime and Chroma threads must not hold the exit (as the memory process does)


if __name__ == "__main__":
    sys.exit(main())
