"""What the hindsight ceiling's saving is made of: the oracle solved with its action set restricted.

For each trace, ``oracle.solve`` with every combination of what it may replace beyond tool results (tool
inputs, assistant texts) and of the stub (the 3-token ``[cleared]`` or the clearing stage's own, which
names the way back; texts always take the short one), each plan billed exactly. The three parts above
the clearing stage's own action space (results, its stub) are split by their Shapley values (each
part's gain averaged over the orders of adding them: the parts interact), and each run's dollars are
split into cache reads, cache writes and uncached input (docs/experiments.md, "savings5"). Last, the headline
ceiling with the Reads of agents' instruction files (``CLAUDE.md``, ``AGENTS.md``, ``AI_*.md``) held to the end:
the model follows them without quoting them, which the fidelity measure (quotes) cannot see
(docs/REPLAY.md, "What the ceiling is made of").

    .venv/bin/python bench/oracle_parts.py ../shared/eval/traces/claude-code-98c71c0e-*.jsonl
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(Path(os.environ.get("CONTEXTWARDEN_SHARED", ROOT.parent / "shared")) / "tiktoken"))

from contextwarden.offline import oracle  # noqa: E402
from contextwarden.offline.replay import load_trace  # noqa: E402
from contextwarden.wire.cost import READ_MULT, price_for  # noqa: E402

PARTS = {"S": "the 3-token stub", "I": "tool inputs", "T": "assistant texts"}


@dataclass(frozen=True)
class Run:
    parts: str  # the subset of PARTS this run has
    client: float
    cost: float
    read: float
    write: float
    uncached: float

    @property
    def saving(self) -> float:
        return (self.client - self.cost) / self.client * 100


def solve(trace, counter, parts: str) -> Run:
    kinds = ("result",) + (("input",) if "I" in parts else ()) + (("text",) if "T" in parts else ())
    rs = oracle.solve(trace, counter, kinds, short="S" in parts).report.results
    read = write = uncached = 0.0
    for r in rs:
        p = price_for(trace.requests[r.index].body.get("model")).input / 1e6
        read += r.ours.read * READ_MULT * p
        uncached += r.ours.uncached * p
        write += r.ours.input_cost - r.ours.read * READ_MULT * p - r.ours.uncached * p
    return Run(parts, sum(r.original.cost for r in rs), sum(r.ours.cost for r in rs), read, write, uncached)


def instructions_kept(trace, counter) -> tuple[float, int]:
    """The headline ceiling (every kind, the 3-token stub) with every Read of an instruction file needed
    to the end of the trace: its cost, and how many such Reads there are."""
    kept = oracle.instruction_reads(trace)
    return sum(r.ours.cost for r in oracle.solve(trace, counter, keep=kept).report.results), len(kept)


def shapley(runs: dict[str, Run]) -> dict[str, float]:
    """Each part's saving (points of the client's cost) averaged over the orders of adding it."""
    key = lambda s: "".join(sorted(s))  # noqa: E731
    orders = list(permutations(PARTS))
    out = dict.fromkeys(PARTS, 0.0)
    for order in orders:
        have = ""
        for p in order:
            out[p] += runs[key(have + p)].saving - runs[key(have)].saving
            have += p
    return {p: v / len(orders) for p, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("traces", nargs="+")
    args = ap.parse_args()
    counter = oracle.counter_for(None)
    for path in args.traces:
        trace = load_trace(path, counter)
        subsets = ["".join(sorted(p for p, on in zip("IST", bits) if on)) for bits in
                   [(i & 1, i & 2, i & 4) for i in range(8)]]
        runs = {s: solve(trace, counter, s) for s in subsets}
        print(f"{Path(path).stem}: client ${runs[''].client:.2f}")
        print(f"  {'may replace':52s} {'cost $':>8s} {'Δ cost':>7s} {'read $':>7s} {'write $':>8s} {'uncached $':>10s}")
        for s, r in sorted(runs.items(), key=lambda kv: (len(kv[0]), kv[0])):
            what = "results" + "".join(f", {PARTS[p]}" for p in s if p != "S") + (", 3-token stub" if "S" in s else ", stage stub")
            print(f"  {what:52s} {r.cost:8.2f} {-r.saving:+6.1f}% {r.read:7.2f} {r.write:8.2f} {r.uncached:10.2f}")
        sh = shapley(runs)
        print("  above results with the stage's stub (Shapley, points): " + ", ".join(f"{PARTS[p]} {v:.1f}" for p, v in sh.items()))
        cost, n = instructions_kept(trace, counter)
        print(f"  the headline ceiling with the {n} Reads of instruction files kept: ${cost:.2f} ({cost / runs[''].client * 100 - 100:+.1f}%;"
              f" {(runs[''].client - cost) / (runs[''].client - runs['IST'].cost) * 100:.0f}% of the headline saving)")


if __name__ == "__main__":
    main()
