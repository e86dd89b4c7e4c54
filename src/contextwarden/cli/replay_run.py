"""What ``contextwarden replay`` runs (:mod:`.replay` registers the command and imports this lazily)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import orjson
import yaml

from ..offline import baselines, oracle
from ..offline.replay import details, lost_examples, replay, request_table, summary_table
from ..settings import SettingsError, load_settings


def parse_sets(items: list[str]) -> dict:
    """``["memory.inject=false", "compaction.target=0.3"]`` -> nested overrides."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set wants SECTION.KEY=VALUE, got {item!r}")
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def _options(args, overrides: dict) -> dict:
    """The replay options of the command line that every run takes."""
    return dict(window=args.window, stage_budget_ms=args.stage_budget_ms, limit=args.limit,
                compaction_calls=not args.no_compaction_calls, turn_hooks=not args.no_turn_hooks, overrides=overrides)


def main(args) -> int:
    overrides = parse_sets(args.sets)
    if args.oracle:
        return run_oracle(args, overrides)
    if args.baselines:
        return run_baselines(args, overrides)
    reports = []
    for path in args.traces:
        def progress(i, n, _p=path):
            if not args.json and sys.stderr.isatty():
                print(f"\r{_p}: {i}/{n}", end="", file=sys.stderr, flush=True)

        try:
            rep = replay(path, profile=args.profile, progress=progress, plugins_dir=args.plugins, **_options(args, overrides))
        except SettingsError as e:
            print(f"contextwarden: {e}", file=sys.stderr)
            return 2
        if not args.json and sys.stderr.isatty():
            print(file=sys.stderr)
        reports.append(rep)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps([r.to_dict() for r in reports], option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    if args.requests:
        for rep in reports:
            print(request_table(rep, wide=args.wide), lost_examples(rep), sep="\n\n", end="\n\n")
    print(summary_table(reports, wide=args.wide), end="\n\n")
    for rep in reports:
        print(details(rep))
    return 1 if sum(r.totals()["sent_invalid"] for r in reports) else 0


def run_baselines(args, overrides: dict) -> int:
    rows, reports = [], []
    for path in args.traces:
        def progress(label, _p=path):
            if not args.json and sys.stderr.isatty():
                print(f"{_p}: {label} ...", file=sys.stderr, flush=True)

        got = baselines.run(path, progress=progress, plugins_dir=args.plugins, **_options(args, overrides))
        rows += baselines.rows(Path(path).name[:40], got)
        reports += got
    if args.json:
        sys.stdout.buffer.write(orjson.dumps({"rows": rows, "reports": [{"baseline": label, **rep.to_dict()} for label, rep in reports]},
                                             option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    if args.requests:
        for label, rep in reports:
            print(f"{label}: " + lost_examples(rep) + "\n")
    print(baselines.table(rows))
    return 1 if any(r["invalid"] for r in rows) else 0


def run_oracle(args, overrides: dict) -> int:
    """``--oracle``: per trace, the runs (the profile, or every baseline) and the hindsight ceiling in one
    table, and the time each took."""
    rows, timings, extra = [], [], []
    prices = load_settings(args.profile or baselines.DEFAULT, None, overrides=overrides).prices  # (the oracle bills as the runs)
    kw = _options(args, overrides)
    for path in args.traces:
        name = Path(path).name[:40]
        t0 = time.perf_counter()
        if args.baselines:
            got = baselines.run(path, **kw)
        else:
            profile = args.profile or baselines.DEFAULT
            mode = str((overrides.get("clearing") or {}).get("policy"))
            label = {"learn": "learned (as it goes)", "frozen": "learned (frozen)"}.get(mode, baselines.NAMES.get(profile, profile))
            got = [(label, replay(path, profile=args.profile, **kw))]
        t1 = time.perf_counter()
        orc = oracle.run(path, overrides=overrides, limit=args.limit, prices=prices)
        if orc.report.trace.fit != got[0][1].trace.fit:  # (another count of the same trace: another tokenizer)
            raise SystemExit(f"{name}: the oracle's size fit {orc.report.trace.fit} is not the replay's {got[0][1].trace.fit}: "
                             f"they did not count alike (the oracle's tokens: {orc.counter_source})")
        rows += baselines.rows(name, got) + [baselines.row("oracle", orc.report.totals(), name)] + (
            [baselines.row(oracle.KEPT, orc.instructions_kept.report.totals(), name)] if orc.instructions_kept else [])
        timings.append((name, got[0][1].seconds, orc.seconds, t1 - t0))
        extra.append((name, orc))
    if args.json:
        sys.stdout.buffer.write(orjson.dumps({"rows": rows, "oracle": [
            {"trace": n, "seconds": o.seconds, "rewrites": o.plan.rewrites, "free_rewrites": o.plan.free,
             "free_moments": o.free_moments, "instruction_reads": o.instruction_reads, "report": o.report.to_dict()}
            for n, o in extra]},
            option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    print(oracle.table(rows))
    print()
    for (name, first, orc_s, _), (_, o) in zip(timings, extra):
        print(f"{name.removeprefix('claude-code-')[:8]}: the replay {first:.1f} s, the oracle {orc_s:.1f} s "
              f"({orc_s / first:.2f}x); {len(o.plan.rewrites)} rewrites, {o.plan.free} where a write was due anyway")
        print(f"  (a first request, an expired prefix); {o.free_moments} expired prefixes or model switches in the trace")
        if o.instruction_reads:
            print(f"  {o.instruction_reads} Reads of instruction files: the model follows them without quoting them, so the")
            print("  oracle finds them unused and clears them; \"oracle, instr.\" needs them to the end (\"of instr.\":")
            print("  the share of its saving)")
    return 0
