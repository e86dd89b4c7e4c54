"""``contextwarden replay TRACE...``: replay recorded sessions through the real pipeline, offline."""

from __future__ import annotations

import sys

from ._common import add_plugins


def register(sub) -> None:
    p = sub.add_parser("replay", help="replay recorded sessions offline and compare tokens and simulated cost",
                       description="Replay Claude Code session logs (*.jsonl) or the proxy's recorded bodies "
                                   "(cw_home/bodies/<session>/) through the real pipeline, offline, and report tokens "
                                   "sent and the bill under Anthropic's prompt-caching rules, original vs ours.")
    p.add_argument("traces", nargs="+", metavar="TRACE", help="a session .jsonl, a bodies folder, or a cw_home")
    p.add_argument("--profile", default=None, help="profile name or YAML path (default: the default profile)")
    add_plugins(p)
    p.add_argument("--window", type=int, default=None, help="context window in tokens (tokens.context_window)")
    p.add_argument("--stage-budget-ms", type=float, default=None,
                   help="time budget of every stage (default: the profile's; a loaded machine may need more)")
    p.add_argument("--requests", action="store_true", help="also print one line per request")
    p.add_argument("--wide", action="store_true",
                   help="the tables with every column (the bill's parts, averages, losses, every stage event)")
    p.add_argument("--limit", type=int, default=None, help="replay only the first N requests of each trace")
    p.add_argument("--no-compaction-calls", action="store_true",
                   help="do not replay the client's own compaction calls reconstructed from the log")
    p.add_argument("--no-turn-hooks", action="store_true", help="do not run cw_turn_complete hooks (memory, budgets)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one profile setting (value read as YAML), e.g. --set memory.inject=false; repeatable")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("--baselines", action="store_true",
                   help="replay each trace with every baseline (the client, clear_tool_uses, observation masking, "
                        "truncation, our profiles) and print one comparison table (--profile is ignored)")
    p.add_argument("--oracle", action="store_true",
                   help="also compute the hindsight ceiling (the cheapest rewrites that lose nothing used later) and "
                        "print the default (or --profile; with --baselines, every baseline) beside it, with the share "
                        "of the ceiling's saving each achieves")
    p.set_defaults(func=run)


def parse_sets(items: list[str]) -> dict:
    """``["memory.inject=false", "compaction.target=0.3"]`` -> nested overrides."""
    import yaml

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


def run(args) -> int:
    import orjson

    from contextwarden.replay import details, lost_examples, replay, request_table, summary_table
    from contextwarden.settings import SettingsError

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
            rep = replay(path, profile=args.profile, window=args.window, stage_budget_ms=args.stage_budget_ms,
                         progress=progress, limit=args.limit, compaction_calls=not args.no_compaction_calls,
                         turn_hooks=not args.no_turn_hooks, overrides=overrides, plugins_dir=args.plugins)
        except SettingsError as e:
            print(f"contextwarden: {e}", file=sys.stderr)
            return 2
        if not args.json and sys.stderr.isatty():
            print(file=sys.stderr)
        reports.append(rep)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps([r.to_dict() for r in reports], option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    for rep in reports:
        if args.requests:
            print(request_table(rep, wide=args.wide))
            print()
            print(lost_examples(rep))
            print()
    print(summary_table(reports, wide=args.wide))
    print()
    for rep in reports:
        print(details(rep))
    bad = sum(r.totals()["sent_invalid"] for r in reports)
    return 1 if bad else 0


def run_baselines(args, overrides: dict) -> int:
    from pathlib import Path

    import orjson

    from contextwarden import baselines
    from contextwarden.replay import lost_examples

    rows, reports = [], []
    for path in args.traces:
        def progress(label, _p=path):
            if not args.json and sys.stderr.isatty():
                print(f"{_p}: {label} ...", file=sys.stderr, flush=True)

        got = baselines.run(path, progress=progress, window=args.window, stage_budget_ms=args.stage_budget_ms,
                            limit=args.limit, compaction_calls=not args.no_compaction_calls,
                            turn_hooks=not args.no_turn_hooks, overrides=overrides, plugins_dir=args.plugins)
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
    import time
    from pathlib import Path

    import orjson

    from contextwarden import baselines, oracle
    from contextwarden.replay import replay

    rows, timings, extra = [], [], []
    for path in args.traces:
        name = Path(path).name[:40]
        kw = dict(window=args.window, stage_budget_ms=args.stage_budget_ms, limit=args.limit,
                  compaction_calls=not args.no_compaction_calls, turn_hooks=not args.no_turn_hooks, overrides=overrides)
        t0 = time.perf_counter()
        if args.baselines:
            got = baselines.run(path, **kw)
        else:
            label = baselines.NAMES.get(args.profile or baselines.DEFAULT, args.profile)
            mode = (overrides.get("clearing") or {}).get("policy")
            label = {"learn": "learned (as it goes)", "frozen": "learned (frozen)"}.get(mode, label)
            got = [(label, replay(path, profile=args.profile, **kw))]
        t1 = time.perf_counter()
        orc = oracle.run(path, overrides=overrides, limit=args.limit)
        rows += baselines.rows(name, got) + [baselines.row("oracle", orc.report.totals(), name)]
        timings.append((name, got[0][1].seconds, orc.seconds, t1 - t0))
        extra.append((name, orc))
    if args.json:
        sys.stdout.buffer.write(orjson.dumps({"rows": rows, "oracle": [
            {"trace": n, "seconds": o.seconds, "rewrites": o.plan.rewrites, "free_rewrites": o.plan.free,
             "free_moments": o.free_moments, "report": o.report.to_dict()} for n, o in extra]},
            option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    print(oracle.table(rows))
    print()
    for (name, first, orc_s, _), (_, o) in zip(timings, extra):
        print(f"{name.removeprefix('claude-code-')[:8]}: the replay {first:.1f} s, the oracle {orc_s:.1f} s "
              f"({orc_s / first:.2f}x); {len(o.plan.rewrites)} rewrites, {o.plan.free} where a write was due anyway")
        print(f"  (a first request, an expired prefix); {o.free_moments} expired prefixes or model switches in the trace")
    return 0
