"""CPU of a real proxy's start, per process: what every ``contextwarden run`` and every end-to-end test pays.

    nice .venv/bin/python bench/proxy_start.py                          # claude-code and observe-only, 3 starts each
    .venv/bin/python bench/proxy_start.py --profiles default --starts 5

Each start is ``mitmdump -s addons/contextwarden.py`` (tests/support/proxy.py) in reverse mode; once it is ready
(``startup`` written, listening) and one second more, the CPU seconds of mitmdump's process, its engine, the memory
process, the compression workers and the embedding worker (``load_bench.cpu_now``); then the whole start and stop
(the reaped processes' CPU). Medians of the starts. CPU, not wall time: on a shared machine it barely depends on
the load; compare two checkouts by running this in each, interleaved.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_bench import cpu_now  # noqa: E402
from proxy_latency import ProxyProcess  # noqa: E402


def reaped_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def one_start(workdir: Path, profile: str) -> dict[str, float]:
    before = reaped_cpu()
    proxy = ProxyProcess(workdir, profile=profile, reverse="http://127.0.0.1:9")
    proxy.start()
    try:
        time.sleep(1.0)
        assert proxy.proc is not None
        ready = cpu_now(proxy.proc.pid)
    finally:
        proxy.stop()
    out = {k: (sum(v.values()) if isinstance(v, dict) else v or 0.0) for k, v in ready.items()}
    out["start_and_stop"] = reaped_cpu() - before
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profiles", nargs="+", default=["claude-code", "observe-only"])
    ap.add_argument("--starts", type=int, default=3)
    args = ap.parse_args()
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for profile in args.profiles:
            runs = [one_start(Path(tmp) / f"{profile}-{i}", profile) for i in range(args.starts)]
            result[profile] = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
            print(f"{profile}: " + ", ".join(f"{k} {v:.2f} s" for k, v in result[profile].items()), flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
