"""``contextwarden replay TRACE...``: replay recorded sessions through the real pipeline, offline."""

from __future__ import annotations

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


def run(args) -> int:
    """The command (its modules imported here, once: ``contextwarden --help`` does not load the pipeline)."""
    from . import replay_run

    return replay_run.main(args)
