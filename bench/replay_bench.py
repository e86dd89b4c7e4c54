"""Replay benchmark: the three Claude Code sessions in ../shared/eval/traces through the real pipeline.

    .venv/bin/python bench/replay_bench.py                     # default profile (claude-code, 200K window)
    .venv/bin/python bench/replay_bench.py --profile claude-code-conservative   # the earlier, later-acting thresholds
    .venv/bin/python bench/replay_bench.py --window 60000      # a small window: clearing/compaction work harder
    .venv/bin/python bench/replay_bench.py --requests          # plus one line per request
    .venv/bin/python bench/replay_bench.py --set memory.inject=false   # the pruning stages alone

Prints, per trace, tokens sent and the bill simulated under Anthropic's prompt-caching rules for the
client's original traffic and for ours (the same table `contextwarden replay` prints: tokens per request
on average and at most, and with --requests one line per request with its tokens, memory and cache
read/write), and exits 1 if any body we would have sent is invalid, the validator rejected a rewrite, or
ours costs more than the original on any trace.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CONTEXTWARDEN_SHARED", ROOT.parent / "shared"))
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))
os.environ.setdefault("CONTEXTWARDEN_MEMORY__MODEL_DIR", str(SHARED / "models" / "all-MiniLM-L6-v2" / "onnx"))
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import orjson  # noqa: E402

from contextwarden.cli.replay_run import parse_sets  # noqa: E402
from contextwarden.offline import baselines  # noqa: E402
from contextwarden.offline.replay import details, lost_examples, replay, request_table, summary_table  # noqa: E402


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=None)
    ap.add_argument("--window", type=int, default=None)
    ap.add_argument("--stage-budget-ms", type=float, default=5000,
                    help="generous by default: the figures are about what the stages do, not this machine's load")
    ap.add_argument("--requests", action="store_true")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a profile setting, e.g. --set memory.inject=false")
    ap.add_argument("--json-out", default=None, help="also write the full reports as JSON to this file")
    ap.add_argument("--baselines", action="store_true",
                    help="every baseline on every trace (the client, clear_tool_uses, masking, truncation, our profiles): one table")
    ap.add_argument("--only", action="append", default=None, metavar="PROFILE",
                    help="with --baselines: only these baselines' profiles (repeatable)")
    ap.add_argument("--targets-from", default=None, metavar="JSON",
                    help="with --baselines: the default profile's tokens per request from an earlier --json-out "
                         "(the truncation baseline cuts to them without running the default again)")
    ap.add_argument("--rows-out", default=None, help="with --baselines: write the table's rows as JSON to this file")
    ap.add_argument("--table-from", nargs="+", default=None, metavar="ROWS_JSON",
                    help="print the one table (text and Markdown) from --rows-out files of separate runs, and exit")
    ap.add_argument("traces", nargs="*", default=sorted(str(p) for p in (SHARED / "eval" / "traces").glob("*.jsonl")))
    args = ap.parse_args(argv)
    if args.table_from:
        rows = baselines.merge([orjson.loads(Path(f).read_bytes()) for f in args.table_from])
        print(baselines.table(rows) + "\n\n" + baselines.markdown(rows))
        return 0
    overrides = parse_sets(args.sets)
    if args.baselines:
        return run_baselines(args, overrides)
    reports = []
    for t in args.traces:
        print(f"replaying {Path(t).name} ...", file=sys.stderr, flush=True)
        reports.append(replay(t, profile=args.profile, window=args.window, stage_budget_ms=args.stage_budget_ms,
                              overrides=overrides))
    if args.json_out:
        Path(args.json_out).write_bytes(orjson.dumps([r.to_dict() for r in reports]))
    for rep in reports:
        if args.requests:
            print(request_table(rep, wide=True) + "\n")
            print(lost_examples(rep) + "\n")
    print(summary_table(reports, wide=True) + "\n")
    for rep in reports:
        print(details(rep) + "\n")
    bad = [r for r in reports if r.totals()["sent_invalid"] or r.totals()["validator_rejected"]
           or r.totals()["cost_ours"] > r.totals()["cost_original"] + 1e-9]
    return 1 if bad else 0


def run_baselines(args, overrides: dict) -> int:
    rows = []
    reports = []
    prior = orjson.loads(Path(args.targets_from).read_bytes()) if args.targets_from else []
    for t in args.traces:
        name = Path(t).name
        targets = next(([r["tokens_sent"] for r in d["requests"]] for d in prior
                        if Path(d["trace"]).name == name and d.get("baseline", baselines.NAMES[baselines.DEFAULT])
                        == baselines.NAMES[baselines.DEFAULT]), None)
        got = baselines.run(t, only=args.only, targets=targets, window=args.window, stage_budget_ms=args.stage_budget_ms,
                            overrides=overrides,
                            progress=lambda label, _n=name: print(f"replaying {_n}: {label} ...", file=sys.stderr, flush=True))
        rows += baselines.rows(name[12:20] if name.startswith("claude-code-") else name, got)
        reports += got
    if args.json_out:
        Path(args.json_out).write_bytes(orjson.dumps([{"baseline": label, **rep.to_dict()} for label, rep in reports]))
    if args.rows_out:
        Path(args.rows_out).write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    for label, rep in reports:
        print(f"{label}: {details(rep)}\n")
        if args.requests:
            print(lost_examples(rep) + "\n")
    print(baselines.table(rows))
    return 1 if any(r["invalid"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
