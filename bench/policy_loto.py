"""The learned clearing policy, leave one trace out (issue 38): per trace, the default (``clearing.policy:
off``); frozen with what the other traces taught (replayed with ``learn`` first, as one user's sessions:
one API key, one tenant); and learning as it goes from nothing. Each run has a home of its own (memory is
not shared between runs); the learned policy is carried from run to run in a state file holding only it.
Prints cost, cost + penalty (against the client's cost) and the lost edit sources and references
(docs/REPLAY.md, "The learned policy").

    .venv/bin/python bench/policy_loto.py ../shared/eval/traces/*.jsonl
    .venv/bin/python bench/policy_loto.py --show ../shared/eval/traces/*.jsonl   # and what each fold was taught
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(Path(os.environ.get("CONTEXTWARDEN_SHARED", ROOT.parent / "shared")) / "tiktoken"))

from contextwarden.compress import policy  # noqa: E402
from contextwarden.offline import baselines  # noqa: E402
from contextwarden.offline.replay import replay  # noqa: E402
from contextwarden.store.state import StateStore  # noqa: E402

KEY = "sk-ant-one-user"  # the traces' user (a replayed request has no credential of its own)
SALT = "0" * 64  # every run's home hashes KEY into the same tenant


def carried(src: Path | None, dst: Path) -> Path:
    """A new state file holding only ``src``'s learned policies (not its sessions' clearing records)."""
    dst.unlink(missing_ok=True)
    if src is not None:
        a, b = StateStore(src, None), StateStore(dst, None)
        for tenant, v in a.items(policy.NS_POLICY):
            b.put(policy.NS_POLICY, tenant, v)
        a.close()
        b.close()
    return dst


def run(trace: Path, mode: str, state: Path | None, budget_ms: float) -> dict:
    ov = {"clearing": {"policy": mode}, "state": {"url": f"sqlite:///{state}"}} if state is not None else {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cw-loto-") as home:
        (Path(home) / "tenant.salt").write_text(SALT)
        rep = replay(str(trace), stage_budget_ms=budget_ms, overrides=ov, home=home, api_key=KEY)
    r = baselines.row(mode, rep.totals(), trace.name)
    print(f"  {short(trace)}  {mode:<6}  ${r['cost']:.2f}  ${r['cost_plus_penalty']:.2f} "
          f"({(r['cost_plus_penalty'] / r['cost_client'] - 1) * 100:+.1f}%)  sources {r['sources_lost']}/{r['sources']}  "
          f"references {r['refs_lost']}/{r['refs']}  [{time.perf_counter() - t0:.0f} s]", flush=True)
    return r


def short(trace: Path) -> str:
    return trace.name.removeprefix("claude-code-")[:8]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("traces", nargs="+", type=Path)
    ap.add_argument("--stage-budget-ms", type=float, default=5000.0)
    ap.add_argument("--show", action="store_true", help="print what each frozen run was taught (as `policy show` does)")
    args = ap.parse_args()
    traces = sorted(args.traces)
    with tempfile.TemporaryDirectory(prefix="cw-loto-state-") as tmp:
        work = Path(tmp)
        rows: dict[tuple[str, str], dict] = {}
        print("the default")
        for t in traces:
            rows[short(t), "off"] = run(t, "off", None, args.stage_budget_ms)
        print("frozen, with what the other traces taught")
        for t in traces:
            state = None
            for other in traces:
                if other != t:
                    state = carried(state, work / f"{short(t)}-{short(other)}.sqlite")
                    run(other, "learn", state, args.stage_budget_ms)
            frozen = carried(state, work / f"{short(t)}-frozen.sqlite")
            if args.show:
                taught = StateStore(frozen, None)
                for tenant, v in taught.items(policy.NS_POLICY):
                    print(policy.describe(tenant, policy.LearnedPolicy.from_dict(v)))
                taught.close()
            rows[short(t), "frozen"] = run(t, "frozen", frozen, args.stage_budget_ms)
        print("learning as it goes")
        for t in traces:
            rows[short(t), "learn"] = run(t, "learn", carried(None, work / f"{short(t)}-learn.sqlite"), args.stage_budget_ms)
    print("\n| trace | the default | frozen | as it goes |\n| --- | --- | --- | --- |")
    for t in traces:
        print(f"| {short(t)} | " + " | ".join(
            f"${r['cost_plus_penalty']:.2f}, {r['sources_lost']}/{r['sources']}, {r['refs_lost']}/{r['refs']}"
            for r in (rows[short(t), m] for m in ("off", "frozen", "learn"))) + " |")
    total = {m: sum(rows[short(t), m]["cost_plus_penalty"] for t in traces) for m in ("off", "frozen", "learn")}
    print(f"\nthe sum, cost + penalty: the default ${total['off']:.2f}, frozen ${total['frozen']:.2f}, as it goes ${total['learn']:.2f}")


if __name__ == "__main__":
    main()
