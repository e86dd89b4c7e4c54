"""LongMemEval through a live proxy: the same questions, haystacks and profile as :mod:`.eval_longmemeval`,
sent as real HTTP requests through ``contextwarden run`` (a real mitmdump, memory in its own process) to
the recording stand-in upstream of :mod:`.eval_live`.

Each question's haystack is replayed as in the in-process eval (one tenant and one session per question,
a request at the end of every haystack session, the session's last assistant message the reply); once
the proxy has completed every turn and the memory process stored everything, the question is sent as the
last user message and its recall is read from the body the upstream received, with the same
:func:`~.eval_longmemeval.reached` as in-process. The question goes unanswered (the proxy stores nothing
of it), as in-process.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from . import eval_longmemeval as lme
from .eval_live import LiveProxy, RecordingUpstream, _memory_event, live_proxy
from .evaluation import mean, request_text


def _forward_tokens(proxy: LiveProxy, since: int) -> tuple[int, int]:
    """(tokens sent upstream, tokens of the client's request) of the last ``forward`` after event ``since``."""
    for e in reversed(proxy.events()[since:]):
        if e.type == "forward":
            d = e.data
            tin = int(d.get("tokens_in") or 0)
            return (int(d.get("tokens_out") or tin) if d.get("changed") else tin), tin
    return 0, 0


def run_question(proxy: LiveProxy, upstream: RecordingUpstream, q: dict[str, Any], report: lme.Report,
                 step: str = "session", haystack_limit: int | None = None) -> None:
    """Replay one question's haystack through the proxy, wait until ingestion settled, ask it."""
    qid = str(q["question_id"])
    key, session = f"sk-eval-lme-{qid}", f"lme-{qid}"  # as in-process: one tenant per question
    sids, sessions, answer = lme.haystack(q, haystack_limit)
    messages: list[dict[str, Any]] = []
    marks: list[tuple[str, str, bool]] = []

    def send_and_reply(upto: int, reply: str) -> None:
        upstream.reply, upstream.drop = reply, False
        r = proxy.post({"model": "claude-eval", "max_tokens": 1024, "messages": messages[:upto]}, key, session)
        report.requests += 1
        report.fallbacks += r.status_code != 200

    lme.replay_haystack(sids, sessions, messages, marks, report, step, send_and_reply)
    proxy.settle(upstream.answered)
    upstream.reply, upstream.drop = "", True  # the question is not answered: nothing of it is stored
    mark, before = len(proxy.events()), len(upstream.bodies)
    asked = messages + [{"role": "user", "content": str(q["question"])}]
    proxy.post({"model": "claude-eval", "max_tokens": 1024, "messages": asked}, key, session)
    report.requests += 1
    body = upstream.bodies[before] if len(upstream.bodies) > before else {}
    s_hit, t_hit, n_turns = lme.session_hits(request_text(body), answer, marks)
    tokens, full = _forward_tokens(proxy, mark)
    mem = _memory_event(proxy, mark, session)
    report.questions.append(lme.QuestionResult(
        question_id=qid, qtype=str(q.get("question_type", "?")), answer_sessions=len(answer), sessions_hit=s_hit,
        trunc_sessions_hit=0, answer_turns=n_turns, turns_hit=t_hit, trunc_turns_hit=0, tokens=tokens,
        trunc_tokens=0, full_tokens=full, injected=int(mem.get("injected") or 0),
        memory_tokens=int(mem.get("tokens") or 0), reason=str(mem.get("skipped") or "")))


def run(data: str | Path, limit: int | None = None, question_ids: list[str] | None = None,
        home: str | Path | None = None, memory: dict[str, Any] | None = None,
        compaction: dict[str, Any] | None = None, step: str = "session", progress=print,
        profile_extra: str = "", window: int = lme.WINDOW, haystack_limit: int | None = None) -> lme.Report:
    """The LongMemEval eval through a live proxy: the same selection and settings as
    :func:`.eval_longmemeval.run`, every question in one proxy (a tenant each)."""
    items = lme.select(lme.load(data), limit, question_ids)
    mem = {**lme.MEMORY, **(memory or {})}
    comp = {**lme.COMPACTION, **(compaction or {})}
    report = lme.Report(settings={"memory": mem, "compaction": comp, "window": window, "step": step,
                                  "haystack_limit": haystack_limit, "live": True})
    t0 = time.perf_counter()
    with live_proxy(home, mem, comp, profile_extra, window, name="longmemeval") as (proxy, upstream):
        for i, q in enumerate(items):
            run_question(proxy, upstream, q, report, step, haystack_limit)
            if progress:
                r = report.questions[-1]
                progress(f"live {i + 1}/{len(items)} {r.question_id} ({r.qtype}): sessions {r.sessions_hit}/"
                         f"{r.answer_sessions}, turns {r.turns_hit}/{r.answer_turns}, {r.tokens:,} of "
                         f"{r.full_tokens:,} tokens ({time.perf_counter() - t0:.0f} s)")
        report.dropped = sum(int(e.data.get("dropped") or 0) for e in proxy.events() if e.type == "memory")
    report.seconds = time.perf_counter() - t0
    return report


def side_by_side(inproc: lme.Report, live: lme.Report) -> str:
    """recall_any, recall_all and turn recall of both runs on the same questions, and the questions whose
    sessions recalled differ."""
    pairs = list(zip(inproc.questions, live.questions))
    same = len(inproc.questions) == len(live.questions) and all(a.question_id == b.question_id for a, b in pairs)

    def turn_recall(r: lme.Report) -> float:
        n = sum(q.answer_turns for q in r.questions)
        return sum(q.turns_hit for q in r.questions) / n if n else 0.0

    def row(r: lme.Report) -> str:
        return (f"recall_any {mean(q.recall_any for q in r.questions):.3f}  recall_all "
                f"{mean(q.recall_all for q in r.questions):.3f}  turn recall {turn_recall(r):.3f}  share of full "
                f"{mean(q.tokens / q.full_tokens for q in r.questions if q.full_tokens):.3f}")

    lower = sum(b.turns_hit < a.turns_hit for a, b in pairs)
    higher = sum(b.turns_hit > a.turns_hit for a, b in pairs)
    return (f"\nLongMemEval in-process vs live proxy ({len(pairs)} questions):\n"
            f"  in-process  {row(inproc)}\n  live        {row(live)}\n"
            f"  questions where live recalled fewer / more answer turns: {lower} / {higher}"
            f"{'' if same else ' (question lists differ!)'}; live: {live.requests:,} requests, "
            f"{live.fallbacks} not answered 200, {live.dropped} items dropped, {live.seconds:.0f} s")
