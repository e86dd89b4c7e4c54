"""``contextwarden eval locomo|longmemeval``: replay benchmark conversations through the real pipeline
and measure what reaches the upstream when each question is asked (see
:mod:`contextwarden.offline.memory.eval_locomo` and :mod:`contextwarden.offline.memory.eval_longmemeval`)."""

from __future__ import annotations

import argparse

from ..offline.assets import shared_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="memory evaluation: LoCoMo / LongMemEval replays through the real pipeline",
                       description="Replay benchmark conversations through the real pipeline (in-process) and "
                                   "check what reaches the upstream when each question is asked.")
    p.add_argument("benchmark", choices=["locomo", "longmemeval"])
    p.add_argument("--limit", type=int, default=None,
                   help="LoCoMo: conversations; LongMemEval: questions (default: all)")
    p.add_argument("--questions", type=int, default=None, help="LoCoMo: the first N questions of each conversation")
    p.add_argument("--conversation", default=None, help="LoCoMo: only this sample_id (e.g. conv-30)")
    p.add_argument("--question-id", action="append", default=None, help="LongMemEval: only this question (repeatable)")
    p.add_argument("--step", choices=["session", "turn"], default="session",
                   help="LongMemEval: one request per haystack session (default) or per assistant turn")
    p.add_argument("--data", default=None, help="the dataset file (default: ../shared/eval/<benchmark file>)")
    p.add_argument("--home", default=None, help="keep the replay's cw_home here (default: a temporary folder)")
    p.add_argument("--cache", default=None,
                   help="embedding cache file reused between runs (default: the user cache dir; 'none' to disable)")
    p.add_argument("--json", default=None, help="also write per-question results as JSON to this file")
    p.add_argument("--check", action="store_true", help="exit 1 when the target is not met")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--live", action="store_true",
                   help="also drive the same conversations and questions through a live proxy "
                        "(contextwarden run in front of a recording stand-in upstream) and print both recalls")
    p.add_argument("--shared-tenant", action="store_true",
                   help="LoCoMo: one tenant holds every conversation (a session each)")
    p.add_argument("--framing", default="turns",
                   help="LoCoMo: how the client frames the conversation, comma-separated to compare several "
                        "(turns, merged, dated, dated-merged, or all); one table row each")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # the one lazy import: the evaluations load the whole pipeline, which `contextwarden --help` does not need
    from ..offline.memory import evalrun

    return evalrun.main(args, shared_dir())
