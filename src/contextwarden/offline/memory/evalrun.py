"""``contextwarden eval locomo|longmemeval`` (its arguments: :mod:`contextwarden.cli.eval`): replay
benchmark conversations through the real pipeline, in-process and with ``--live`` through a live proxy
too, print the tables and whether the targets are met (see :mod:`.eval_locomo`, :mod:`.eval_longmemeval`)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import orjson
import platformdirs

from ..assets import offline_assets
from . import eval_locomo, eval_longmemeval
from .evaluation import LIVE_TOLERANCE, mean

DATA = {"locomo": "locomo_dev.json", "longmemeval": "longmemeval_s_dev.json"}
TARGETS = {"locomo": {"evidence-weighted recall (categories 1-4, every framing)": 0.85},
           "longmemeval": {"recall_any": 0.97, "recall_all": 0.95}}  # issue 40's


def main(args: argparse.Namespace, shared: Path | None) -> int:
    """``contextwarden eval`` (the arguments of :mod:`contextwarden.cli.eval`): run the benchmark, print
    its tables and whether the targets are met; 1 with ``--check`` when one is not, 2 without data."""
    data = Path(args.data) if args.data else (shared / "eval" / DATA[args.benchmark] if shared else None)
    if data is None or not data.is_file():
        print(f"dataset not found ({data}); pass --data or set CONTEXTWARDEN_SHARED", file=sys.stderr)
        return 2
    memory = offline_assets(shared)
    cache = None if (args.cache or "").lower() == "none" else (
        Path(args.cache) if args.cache else Path(platformdirs.user_cache_dir("contextwarden")) / "eval-embeddings.sqlite")
    progress = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    bench = _locomo if args.benchmark == "locomo" else _longmemeval
    return bench(args, data, dict(memory=memory, embed_cache=cache, progress=progress))


def _locomo(args: argparse.Namespace, data: Path, common: dict) -> int:
    names = eval_locomo.FRAMINGS if args.framing == "all" else tuple(f.strip() for f in args.framing.split(",") if f.strip())
    unknown = [f for f in names if f not in eval_locomo.FRAMINGS]
    if unknown or not names:
        print(f"unknown framing {unknown or args.framing!r}: one of {', '.join(eval_locomo.FRAMINGS)} or all", file=sys.stderr)
        return 2
    select = dict(limit=args.limit, questions=args.questions, conversation=args.conversation,
                  shared_tenant=args.shared_tenant, **common)
    reports = {f: eval_locomo.run(data, home=args.home, framing=f, **select) for f in names}
    lives = {f: eval_locomo.run(data, framing=f, live=True, **select) for f in names} if args.live else {}
    for f in names:
        print(reports[f].render() + "\n")
        if f in lives:
            print(eval_locomo.side_by_side(reports[f], lives[f]) + "\n")
    if len(names) > 1:
        print(eval_locomo.framings_table(reports, lives or None) + "\n")
    met = _target("locomo", min(r.weighted() for r in reports.values()))
    if lives:
        met = _live_target(all(abs(lives[f].weighted() - reports[f].weighted()) <= LIVE_TOLERANCE for f in lives)) and met
    _write_json(args.json, "locomo", reports[names[-1]], lives.get(names[-1]),
                framings={f: _questions(r) for f, r in reports.items()},
                live_framings={f: _questions(r) for f, r in lives.items()})
    return 1 if args.check and not met else 0


def _longmemeval(args: argparse.Namespace, data: Path, common: dict) -> int:
    select = dict(limit=args.limit, question_ids=args.question_id, step=args.step, **common)
    report = eval_longmemeval.run(data, home=args.home, **select)
    print(report.render())
    met = _target("longmemeval", mean(q.recall_any for q in report.questions), mean(q.recall_all for q in report.questions))
    live = None
    if args.live:
        live = eval_longmemeval.run(data, live=True, **select)
        print(eval_longmemeval.side_by_side(report, live))
        met = _live_target(abs(mean(q.recall_any for q in live.questions) - mean(q.recall_any for q in report.questions))
                           <= LIVE_TOLERANCE) and met
    share = max((q.tokens / q.full_tokens for q in report.questions if q.full_tokens), default=0.0)
    print(f"largest share of full-history tokens sent: {share:.3f} (target <= 0.25)")
    _write_json(args.json, "longmemeval", report, live)
    return 1 if args.check and not (met and share <= 0.25) else 0


def _target(benchmark: str, *scores: float) -> bool:
    """Prints each of the benchmark's targets (``TARGETS``, in order) beside its score; whether all are met."""
    for (metric, target), score in zip(TARGETS[benchmark].items(), scores, strict=True):
        print(f"target: {metric} >= {target:.2f}: {'met' if score >= target else 'NOT met'} ({score:.3f})")
    return all(score >= target for target, score in zip(TARGETS[benchmark].values(), scores, strict=True))


def _live_target(close: bool) -> bool:
    print(f"target: live recall within {LIVE_TOLERANCE} of in-process: {'met' if close else 'NOT met'}")
    return close


def _questions(report) -> list[dict]:
    return [dataclasses.asdict(q) for q in report.questions]


def _write_json(path: str | None, benchmark: str, report, live, **framings) -> None:
    """Per-question results (and the live run's, and each framing's) as JSON."""
    if not path:
        return
    out = {"benchmark": benchmark, "settings": report.settings, "questions": _questions(report)}
    if live is not None:
        out["live_questions"] = _questions(live)
    Path(path).write_bytes(orjson.dumps({**out, **framings}, option=orjson.OPT_INDENT_2))
