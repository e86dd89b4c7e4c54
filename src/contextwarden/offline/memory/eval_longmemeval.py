"""LongMemEval-S replay: do the sessions that answer a question reach the upstream, with a 32K window?

Each question's haystack (~50 sessions, ~115K tokens) is replayed as one long conversation through the
real pipeline, in-process or (``live``) through a live proxy, one tenant and one session per question: at the end of every haystack session the client sends everything so far (its last user
message last) and the session's final assistant message is the reply (``step="session"``; ``"turn"``
sends a request for every assistant message instead). Clearing and compaction keep the request in the
window, every completed turn is ingested. Then the question is asked as the last user message, with
ingestion settled first (and nothing of the question stored), and the body that goes upstream is checked:

- session-level ``recall_any`` / ``recall_all``: whether any / all of the answer sessions reach it (a
  session reaches it when one of its ``has_answer`` turns does; a session without marks, when any of its
  turns does);
- turn-level recall: the share of ``has_answer`` turns that reach it;
- tokens sent, as a share of the full history's.

A turn reaches the request when its text does (whitespace-normalised), or every line of it does (memory
quotes each line, and a turn over ~240 word pieces is stored in chunks: a 949-character answer full of
URLs is); a turn longer than one memory chunk counts when at least half of its lines do.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...settings.memory import MemorySection
from .evaluation import Run, contains, costs, load, mean, normalise, pick, table
from .evaluation import client as eval_client

WINDOW = 32_768
# The profile under test (README: "contextwarden eval longmemeval"): Claude Code's, with a 32K window.
# Compaction keeps the request under 60% of the window, memory may add 15%: at most ~25K tokens sent,
# under a quarter of the ~105-115K-token histories.
MEMORY = {"budget_fraction": 0.15, "top_k": 40, "timeout_ms": 60000}
COMPACTION = {"soft_threshold": 0.55, "hard_threshold": 0.60, "target": 0.40, "protect_recent_turns": 4,
              "summary_max_tokens": 1500}
# A turn longer than one memory chunk (memory.chunk_tokens word pieces at ~4 characters each) is stored
# in pieces; it counts as recalled when at least half of its lines reach the upstream.
LONG_TURN_CHARS = MemorySection.model_fields["chunk_tokens"].default * 4


@dataclass
class QuestionResult:
    question_id: str
    qtype: str
    answer_sessions: int
    sessions_hit: int
    trunc_sessions_hit: int
    answer_turns: int
    turns_hit: int
    trunc_turns_hit: int
    tokens: int
    trunc_tokens: int
    full_tokens: int
    injected: int
    memory_tokens: int
    reason: str

    @property
    def recall_any(self) -> float:
        return float(self.sessions_hit > 0)

    @property
    def recall_all(self) -> float:
        return float(self.sessions_hit == self.answer_sessions)


@dataclass
class Report(Run):
    questions: list[QuestionResult] = field(default_factory=list)

    def render(self) -> str:
        qs = self.questions
        full = mean(q.full_tokens for q in qs)
        rows = [
            ["contextwarden", mean(q.recall_any for q in qs), mean(q.recall_all for q in qs), turn_recall(self),
             round(mean(q.tokens for q in qs)), mean(q.tokens / q.full_tokens for q in qs if q.full_tokens)],
            ["truncation (last N, same tokens)", mean(float(q.trunc_sessions_hit > 0) for q in qs),
             mean(float(q.trunc_sessions_hit == q.answer_sessions) for q in qs), turn_recall(self, True),
             round(mean(q.trunc_tokens for q in qs)), mean(q.trunc_tokens / q.full_tokens for q in qs if q.full_tokens)],
            ["full history", 1.0, 1.0, 1.0, round(full), 1.0],
        ]
        title = (f"LongMemEval-S: {len(qs)} questions, {self.turns:,} turns, window {self.settings.get('window', WINDOW):,} tokens "
                 f"({self.seconds:.0f} s)")
        out = table(title, ["method", "recall_any", "recall_all", "turn recall", "tokens/question", "share of full"], rows)
        by_type: dict[str, list[QuestionResult]] = {}
        for q in qs:
            by_type.setdefault(q.qtype, []).append(q)
        out += "\n" + table("contextwarden by question type", ["type", "questions", "recall_any", "recall_all"],
                            [[t, len(v), mean(q.recall_any for q in v), mean(q.recall_all for q in v)]
                             for t, v in sorted(by_type.items())])
        return out + "\n" + self.memory_line()


def _list(value: Any) -> list:
    """Some fields are Python-list strings; parse those."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return [value]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def reached(haystack: str, text: str) -> bool:
    """Whether a turn's text reaches the request (see the module docstring)."""
    return contains(haystack, text, 0.5 if len(normalise(text)) > LONG_TURN_CHARS else 1)


def haystack(q: dict[str, Any], haystack_limit: int | None = None) -> tuple[list[str], list[list], set[str]]:
    """A question's (session ids, sessions, answer session ids). ``haystack_limit`` (smoke tests only, not
    the benchmark) keeps that many sessions: the answer sessions first, then the earliest others."""
    sessions = [_list(s) for s in _list(q["haystack_sessions"])]
    sids = [str(x) for x in _list(q["haystack_session_ids"])]
    answer = {str(x) for x in _list(q["answer_session_ids"])}
    if haystack_limit:
        # the answer sessions first (as far from the question as possible), then the earliest others
        pairs = list(zip(sids, sessions))
        keep = [p for p in pairs if p[0] in answer]
        keep += [p for p in pairs if p[0] not in answer][: max(0, haystack_limit - len(keep))]
        sids, sessions = [k for k, _ in keep], [v for _, v in keep]
    return sids, sessions, answer


def replay_haystack(sids: list[str], sessions: list[list], messages: list[dict[str, Any]],
                    marks: list[tuple[str, str, bool]], report: Report, step: str,
                    send_and_reply: Callable[[int, str], None]) -> None:
    """Walk the haystack into ``messages`` (and ``marks``: session id, text, has_answer per message),
    calling ``send_and_reply(upto, reply)`` where the client sends ``messages[:upto]`` and gets ``reply``."""
    for sid, turns in zip(sids, sessions):
        turns = [t for t in turns if isinstance(t, dict) and str(t.get("content") or "").strip()]
        for t in turns:
            role = "assistant" if t.get("role") == "assistant" else "user"
            if step == "turn" and role == "assistant" and messages and messages[-1]["role"] == "user":
                send_and_reply(len(messages), str(t["content"]))
            messages.append({"role": role, "content": str(t["content"])})
            marks.append((sid, str(t["content"]), bool(t.get("has_answer"))))
            report.turns += 1
        if step == "session" and turns:
            # the session's last user message is the request; the assistant message after it the reply
            last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
            if last_user is not None:
                tail = messages[last_user + 1:]
                send_and_reply(last_user + 1, tail[0]["content"] if tail else "")


def session_hits(hay: str, answer: set[str], marks: list[tuple[str, str, bool]]) -> tuple[int, int, int]:
    """(answer sessions reached, answer turns reached, answer turns) in the request text ``hay``."""
    hit_sessions, turns_hit, turns = 0, 0, 0
    for sid in answer:
        own = [(txt, ha) for s, txt, ha in marks if s == sid]
        marked = [txt for txt, ha in own if ha]
        turns += len(marked)
        got = [reached(hay, txt) for txt in marked]
        turns_hit += sum(got)
        if any(got) if marked else any(reached(hay, txt) for txt, _ in own):
            hit_sessions += 1
    return hit_sessions, turns_hit, turns


def run_question(client, q: dict[str, Any], report: Report, step: str = "session",
                 haystack_limit: int | None = None) -> None:
    """Replay one question's haystack through ``client`` (:class:`~.evaluation.InProcess` or
    :class:`~.evaluation.Live`) and ask it (``haystack_limit``: see :func:`haystack`)."""
    qid = str(q["question_id"])
    key, session = f"sk-eval-lme-{qid}", f"lme-{qid}"  # one tenant per question: haystacks never see each other
    sids, sessions, answer = haystack(q, haystack_limit)
    messages: list[dict[str, Any]] = []
    marks: list[tuple[str, str, bool]] = []  # (session id, text, has_answer) per message

    def send_and_reply(upto: int, reply: str) -> None:
        report.requests += 1
        report.fallbacks += client.turn(messages[:upto], reply, key, session)

    replay_haystack(sids, sessions, messages, marks, report, step, send_and_reply)
    got = client.ask(messages + [{"role": "user", "content": str(q["question"])}], key, session)
    report.requests += 1
    report.fallbacks += got.failed
    s_hit, t_hit, n_turns = session_hits(got.text, answer, marks)
    ts_hit, tt_hit, _ = session_hits(got.trunc_text, answer, marks)
    report.questions.append(QuestionResult(
        question_id=qid, qtype=str(q.get("question_type", "?")), answer_sessions=len(answer), sessions_hit=s_hit,
        trunc_sessions_hit=ts_hit, answer_turns=n_turns, turns_hit=t_hit, trunc_turns_hit=tt_hit, **costs(got)))


def run(data: str | Path, limit: int | None = None, question_ids: list[str] | None = None,
        home: str | Path | None = None, memory: dict[str, Any] | None = None,
        compaction: dict[str, Any] | None = None, embed_cache: str | Path | None = None, step: str = "session",
        progress=print, window: int = WINDOW, haystack_limit: int | None = None, live: bool = False) -> Report:
    """Replay ``limit`` questions (or those in ``question_ids``) and ask each, in-process or through a
    ``live`` proxy (every question in one proxy, a tenant each)."""
    items = pick(load(data), limit, question_ids, "question_id")
    mem = {**MEMORY, **(memory or {})}
    comp = {**COMPACTION, **(compaction or {})}
    report = Report(settings={"memory": mem, "compaction": comp, "window": window, "step": step,
                              "haystack_limit": haystack_limit, "live": live})
    t0 = time.perf_counter()
    with eval_client("longmemeval", home, window, mem, comp, embed_cache, live) as client:
        for i, q in enumerate(items):
            run_question(client, q, report, step, haystack_limit)
            if progress:
                r = report.questions[-1]
                progress(f"{'live ' if live else ''}{i + 1}/{len(items)} {r.question_id} ({r.qtype}): sessions "
                         f"{r.sessions_hit}/{r.answer_sessions}, turns {r.turns_hit}/{r.answer_turns}, {r.tokens:,} of "
                         f"{r.full_tokens:,} tokens ({time.perf_counter() - t0:.0f} s)")
        report.dropped = client.dropped()
    report.seconds = time.perf_counter() - t0
    return report


def turn_recall(r: Report, trunc: bool = False) -> float:
    n = sum(q.answer_turns for q in r.questions)
    return sum(q.trunc_turns_hit if trunc else q.turns_hit for q in r.questions) / n if n else 0.0


def side_by_side(inproc: Report, live: Report) -> str:
    """recall_any, recall_all and turn recall of both runs on the same questions, and the questions whose
    sessions recalled differ."""
    pairs = list(zip(inproc.questions, live.questions))
    same = len(inproc.questions) == len(live.questions) and all(a.question_id == b.question_id for a, b in pairs)

    def row(r: Report) -> str:
        return (f"recall_any {mean(q.recall_any for q in r.questions):.3f}  recall_all "
                f"{mean(q.recall_all for q in r.questions):.3f}  turn recall {turn_recall(r):.3f}  share of full "
                f"{mean(q.tokens / q.full_tokens for q in r.questions if q.full_tokens):.3f}")

    lower = sum(b.turns_hit < a.turns_hit for a, b in pairs)
    higher = sum(b.turns_hit > a.turns_hit for a, b in pairs)
    return (f"\nLongMemEval in-process vs live proxy ({len(pairs)} questions):\n"
            f"  in-process  {row(inproc)}\n  live        {row(live)}\n"
            + live.live_line(lower, higher, "fewer / more answer turns", same))
