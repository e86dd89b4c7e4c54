"""``contextwarden eval locomo|longmemeval``: replay benchmark conversations through the real pipeline
and measure what reaches the upstream when each question is asked (see
:mod:`contextwarden.memory.eval_locomo` and :mod:`contextwarden.memory.eval_longmemeval`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

TARGETS = {"locomo": ("evidence-weighted recall (categories 1-4, every framing)", 0.85), "longmemeval": ("recall_any", 0.90)}


def shared_dir() -> Path | None:
    """``$CONTEXTWARDEN_SHARED``, else ``../shared`` next to the project checkout."""
    env = os.environ.get("CONTEXTWARDEN_SHARED")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "shared"
        if (cand / "eval").is_dir():
            return cand
    return None


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
    import dataclasses

    import orjson

    shared = shared_dir()
    names = {"locomo": "locomo_dev.json", "longmemeval": "longmemeval_s_dev.json"}
    data = Path(args.data) if args.data else (shared / "eval" / names[args.benchmark] if shared else None)
    if data is None or not data.is_file():
        print(f"dataset not found ({data}); pass --data or set CONTEXTWARDEN_SHARED", file=sys.stderr)
        return 2
    # offline assets from ../shared when present (a user's machine downloads them instead)
    memory: dict = {}
    if shared is not None:
        if (shared / "tiktoken").is_dir():
            os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(shared / "tiktoken"))
        model = shared / "models" / "all-MiniLM-L6-v2" / "onnx"
        if (model / "model.onnx").is_file() and not os.environ.get("CONTEXTWARDEN_MEMORY__MODEL_DIR"):
            memory["model_dir"] = str(model)
    cache = None
    if (args.cache or "").lower() != "none":
        if args.cache:
            cache = Path(args.cache)
        else:
            import platformdirs

            cache = Path(platformdirs.user_cache_dir("contextwarden")) / "eval-embeddings.sqlite"
    progress = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    live = None
    # the live proxy's memory process reads and fills the same embedding cache (results are the same)
    live_memory = {**memory, "embed_cache": str(cache)} if cache else memory
    if args.benchmark == "locomo":
        from ..memory import eval_locomo as ev

        names = ev.FRAMINGS if args.framing == "all" else tuple(f.strip() for f in args.framing.split(",") if f.strip())
        unknown = [f for f in names if f not in ev.FRAMINGS]
        if unknown or not names:
            print(f"unknown framing {unknown or args.framing!r}: one of {', '.join(ev.FRAMINGS)} or all", file=sys.stderr)
            return 2
        reports, lives = {}, {}
        for framing in names:
            reports[framing] = ev.run(data, limit=args.limit, questions=args.questions, conversation=args.conversation,
                                      home=args.home, memory=memory, embed_cache=cache, progress=progress,
                                      shared_tenant=args.shared_tenant, framing=framing)
            if args.live:
                from ..memory import eval_live

                lives[framing] = eval_live.run(data, limit=args.limit, questions=args.questions,
                                               conversation=args.conversation, memory=live_memory,
                                               progress=progress, shared_tenant=args.shared_tenant, framing=framing)
        for framing in names[:-1]:
            print(reports[framing].render() + "\n")
            if args.live:
                from ..memory.eval_live import side_by_side

                print(side_by_side(reports[framing], lives[framing]) + "\n")
        report, live = reports[names[-1]], lives.get(names[-1])
        score = min(r.weighted() for r in reports.values())
        if len(names) > 1:
            print(ev.framings_table(reports, lives or None) + "\n")
    else:
        from ..memory import eval_longmemeval as ev

        report = ev.run(data, limit=args.limit, question_ids=args.question_id, home=args.home, memory=memory,
                        embed_cache=cache, step=args.step, progress=progress)
        score = sum(q.recall_any for q in report.questions) / max(1, len(report.questions))
        if args.live:
            from ..memory import eval_live_longmemeval

            live = eval_live_longmemeval.run(data, limit=args.limit, question_ids=args.question_id,
                                             memory=live_memory, step=args.step, progress=progress)
    print(report.render())
    metric, target = TARGETS[args.benchmark]
    met = score >= target
    print(f"target: {metric} >= {target:.2f}: {'met' if met else 'NOT met'} ({score:.3f})")
    if live is not None:
        from ..memory.eval_live import LIVE_TOLERANCE, side_by_side
        from ..memory.eval_live_longmemeval import side_by_side as lme_side_by_side

        if args.benchmark == "locomo":
            print(side_by_side(report, live))
            close = all(abs(lives[f].weighted() - reports[f].weighted()) <= LIVE_TOLERANCE for f in lives)
        else:
            print(lme_side_by_side(report, live))
            live_score = sum(q.recall_any for q in live.questions) / max(1, len(live.questions))
            close = abs(live_score - score) <= LIVE_TOLERANCE
        print(f"target: live recall within {LIVE_TOLERANCE} of in-process: {'met' if close else 'NOT met'}")
        met = met and close
    if args.benchmark == "longmemeval":
        share = max((q.tokens / q.full_tokens for q in report.questions if q.full_tokens), default=0.0)
        print(f"largest share of full-history tokens sent: {share:.3f} (target <= 0.25)")
        met = met and share <= 0.25
    if args.json:
        Path(args.json).write_bytes(orjson.dumps({"benchmark": args.benchmark, "settings": report.settings,
                                                  "questions": [dataclasses.asdict(q) for q in report.questions],
                                                  **({"live_questions": [dataclasses.asdict(q) for q in live.questions]}
                                                     if live is not None else {}),
                                                  **({"framings": {f: [dataclasses.asdict(q) for q in r.questions]
                                                                   for f, r in reports.items()},
                                                      "live_framings": {f: [dataclasses.asdict(q) for q in r.questions]
                                                                        for f, r in lives.items()}}
                                                     if args.benchmark == "locomo" else {})},
                                                 option=orjson.OPT_INDENT_2))
    return 1 if args.check and not met else 0
