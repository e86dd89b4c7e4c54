"""LoCoMo replay: does the evidence of each question reach the upstream, with a 4K-token window?

Each conversation is replayed through the real pipeline, in-process or (``live``) through a live proxy
(:mod:`.evaluation`): speaker A is the user, speaker B the assistant; every B turn is
the reply to a request holding everything said so far (clearing and compaction keep it in the window;
every completed turn is ingested). Then every question is asked as the last user message after the whole
conversation, with ingestion settled first, and the body that goes upstream is checked: a question's
recall is the share of its evidence turns whose text, or every line of it (memory quotes each line), is in
that body (kept history, compaction summary or injected memory).

Baselines in the same run (in-process): *truncation* keeps the last messages that fit the tokens the
pipeline sent for that question; *full history* sends everything (recall 1 by construction; its tokens
are the cost). ``shared_tenant``: every conversation under one API key (one tenant holding all of them,
one session per conversation), to measure whether the other sessions' memory crowds out the current one's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .evaluation import Run, contains, costs, load, mean, pick, table
from .evaluation import client as eval_client

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
WINDOW = 4096
# The profile under test (README: "contextwarden eval locomo"): Claude Code's, with a 4K window.
# Compaction runs early and keeps ~30% of the window (a 400-token summary and the latest turns) so that
# memory may use up to 45% of it; the request never exceeds the window (memory gets what is left).
MEMORY = {"budget_fraction": 0.45, "top_k": 60, "timeout_ms": 60000}
COMPACTION = {"soft_threshold": 0.45, "hard_threshold": 0.55, "target": 0.30, "protect_recent_turns": 2,
              "summary_max_tokens": 400, "min_span_tokens": 500}


@dataclass
class QuestionResult:
    conversation: str
    category: int
    evidence: int
    hits: int
    trunc_hits: int
    tokens: int
    trunc_tokens: int
    full_tokens: int
    injected: int
    memory_tokens: int
    reason: str

    @property
    def recall(self) -> float:
        return self.hits / self.evidence if self.evidence else 0.0

    @property
    def trunc_recall(self) -> float:
        return self.trunc_hits / self.evidence if self.evidence else 0.0


@dataclass
class Report(Run):
    questions: list[QuestionResult] = field(default_factory=list)
    conversations: int = 0
    missing_evidence: int = 0  # evidence ids not in the conversation (data errors), left out

    def recall(self, cat: int | None = None, trunc: bool = False) -> float:
        qs = [q for q in self.questions if cat is None or q.category == cat]
        return mean(q.trunc_recall if trunc else q.recall for q in qs)

    def weighted(self, cats: tuple[int, ...] = (1, 2, 3, 4)) -> float:
        """Evidence-weighted recall over ``cats``: evidence turns recalled / evidence turns asked for."""
        qs = [q for q in self.questions if q.category in cats]
        return sum(q.hits for q in qs) / max(1, sum(q.evidence for q in qs))

    def memory_tokens(self) -> float:
        return mean(q.memory_tokens for q in self.questions)

    def render(self) -> str:
        cats = sorted({q.category for q in self.questions})
        header = ["method", "recall"] + [CATEGORIES.get(c, str(c)) for c in cats] + ["tokens/question"]
        rows = [
            ["contextwarden"] + [self.recall()] + [self.recall(c) for c in cats] + [round(mean(q.tokens for q in self.questions))],
            ["truncation (last N, same tokens)"] + [self.recall(trunc=True)] + [self.recall(c, True) for c in cats]
            + [round(mean(q.trunc_tokens for q in self.questions))],
            ["full history"] + [1.0] * (1 + len(cats)) + [round(mean(q.full_tokens for q in self.questions))],
        ]
        title = (f"LoCoMo ({self.settings.get('framing', 'turns')}): {self.conversations} conversations, {self.turns:,} turns, {len(self.questions):,} questions, "
                 f"window {self.settings.get('window', WINDOW):,} tokens ({self.seconds:.0f} s)")
        out = table(title, header, rows)
        out += ("\nevidence-weighted, categories 1-4: " + f"{self.weighted():.3f} ("
                + ", ".join(f"{CATEGORIES[c]} {self.weighted((c,)):.3f}" for c in (1, 2, 3, 4)) + ")")
        return out + f"\n{self.memory_line()}; {self.missing_evidence} evidence ids not in the data were left out"


def framings_table(reports: dict[str, Report], live: dict[str, Report] | None = None) -> str:
    """One row per framing: evidence-weighted recall over categories 1-4, per category, memory tokens."""
    header = ["framing", "weighted 1-4"] + [CATEGORIES[c] for c in (1, 2, 3, 4)] + ["memory tokens/question"]
    header += ["live weighted 1-4"] if live else []
    rows = []
    for name, r in reports.items():
        row = [name, r.weighted()] + [r.weighted((c,)) for c in (1, 2, 3, 4)] + [round(r.memory_tokens())]
        rows.append(row + ([live[name].weighted()] if live and name in live else []))
    return table("LoCoMo by framing (evidence-weighted recall)", header, rows)


def sessions_of(conv: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    keys = [k for k in conv if k.startswith("session_") and not k.endswith("date_time") and isinstance(conv[k], list)]
    keys.sort(key=lambda k: int(k.split("_")[1]))
    return [(conv.get(f"{k}_date_time", ""), conv[k]) for k in keys]


def turn_content(turn: dict[str, Any]) -> str:
    """A turn as its message says it: the speaker's name, the text, and a shared photo's caption."""
    text = f"{turn['speaker']}: {turn['text']}"
    if turn.get("blip_caption"):
        text += f" [shares a photo: {turn['blip_caption']}]"
    return text


FRAMINGS = ("turns", "merged", "dated", "dated-merged")


def framed(conv: dict[str, Any], framing: str = "turns") -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The conversation as a client of one shape sends it: its messages (speaker A's are the user's, B's
    the assistant's) and each turn's text by ``dia_id`` (what a question's evidence must bring back).

    ``turns``: one message per turn; ``merged``: consecutive turns of one speaker are one message (their
    lines joined); ``dated``: each turn written after its session's date, as chat exports and bridges do
    (``(1:10 pm on 27 March, 2023) Audrey: ...``); ``dated-merged``: both."""
    if framing not in FRAMINGS:
        raise ValueError(f"unknown framing {framing!r} (one of {', '.join(FRAMINGS)})")
    a = conv["speaker_a"]
    messages: list[dict[str, Any]] = []
    by_id: dict[str, str] = {}
    for date, turns in sessions_of(conv):
        for t in turns:
            by_id[t["dia_id"]] = t["text"]
            role = "user" if t["speaker"] == a else "assistant"
            content = turn_content(t)
            if framing.startswith("dated") and date:
                content = f"({date}) {content}"
            if framing.endswith("merged") and messages and messages[-1]["role"] == role:
                messages[-1] = {"role": role, "content": messages[-1]["content"] + "\n" + content}
            else:
                messages.append({"role": role, "content": content})
    return messages, by_id


SHARED_KEY = "sk-eval-locomo-shared"  # shared_tenant: one tenant holds every conversation (a session each)


def tenant_key(cid: str) -> str:
    """The API key of a conversation: one tenant per conversation, no conversation sees another's memory."""
    return f"sk-eval-locomo-{cid}"


def run_conversation(client, sample: dict[str, Any], report: Report, max_questions: int | None = None,
                     progress=None, replay: bool = True, key: str | None = None, ask: bool = True) -> None:
    """Replay one conversation through ``client`` (:class:`~.evaluation.InProcess` or
    :class:`~.evaluation.Live`) and ask its questions (``replay=False``: the client's memory already holds
    the replayed conversation; only the questions are asked; ``ask=False``: only the replay; ``key``:
    the API key, by default the conversation's own tenant)."""
    cid = sample.get("sample_id", "conv")
    key = key or tenant_key(cid)
    turns, by_id = framed(sample["conversation"], report.settings.get("framing", "turns"))
    messages: list[dict[str, Any]] = []
    for m in turns:
        if m["role"] == "assistant" and messages and replay:
            report.requests += 1
            report.fallbacks += client.turn(messages, m["content"], key, cid)
        messages.append(m)
    report.turns += len(by_id)
    qa = (sample["qa"][:max_questions] if max_questions else sample["qa"]) if ask else []
    for i, q in enumerate(qa):
        ev = [e for e in q.get("evidence", []) if e in by_id]
        report.missing_evidence += len(q.get("evidence", [])) - len(ev)
        if not ev:
            continue
        got = client.ask(messages + [{"role": "user", "content": q["question"]}], key, cid)
        report.requests += 1
        report.fallbacks += got.failed
        report.questions.append(QuestionResult(
            conversation=cid, category=int(q.get("category", 0)), evidence=len(ev),
            hits=sum(contains(got.text, by_id[e]) for e in ev), trunc_hits=sum(contains(got.trunc_text, by_id[e]) for e in ev),
            **costs(got)))
        if progress and (i + 1) % 50 == 0:
            progress(f"  {cid}: {i + 1}/{len(qa)} questions, recall so far {report.recall():.3f}")


def run(data: str | Path | list, limit: int | None = None, questions: int | None = None, conversation: str | None = None,
        home: str | Path | None = None, memory: dict[str, Any] | None = None,
        compaction: dict[str, Any] | None = None, embed_cache: str | Path | None = None, progress=print,
        shared_tenant: bool = False, window: int = WINDOW, framing: str = "turns", live: bool = False) -> Report:
    """Replay the LoCoMo conversations (``limit`` of them, or the one named ``conversation``) and ask
    their questions (the first ``questions`` of each), in-process or through a ``live`` proxy. With
    ``shared_tenant`` one tenant holds every conversation (a session each): all are replayed first, then
    each one's questions are asked."""
    samples = pick(load(data), limit, [conversation] if conversation else None, "sample_id")
    mem = {**MEMORY, **(memory or {})}
    comp = {**COMPACTION, **(compaction or {})}
    report = Report(settings={"memory": mem, "compaction": comp, "window": window, "shared_tenant": shared_tenant,
                              "framing": framing, "live": live})
    t0 = time.perf_counter()
    key = SHARED_KEY if shared_tenant else None
    tag = "live " if live else ""
    with eval_client("locomo", home, window, mem, comp, embed_cache, live) as client:
        if shared_tenant:  # everything stored first: each conversation's questions see all the others
            for sample in samples:
                run_conversation(client, sample, report, key=key, ask=False)
        for sample in samples:
            run_conversation(client, sample, report, questions, progress, replay=not shared_tenant, key=key)
            report.conversations += 1
            if progress:
                progress(f"{tag}{sample.get('sample_id')}: recall so far {report.recall():.3f} "
                         f"({len(report.questions)} questions, {time.perf_counter() - t0:.0f} s)")
        report.dropped = client.dropped()
    report.seconds = time.perf_counter() - t0
    return report


def side_by_side(inproc: Report, live: Report) -> str:
    """Both recalls on the same questions, and how many questions differ (and which way)."""
    key = lambda q: (q.conversation, q.category, q.evidence)  # noqa: E731
    pairs = list(zip(inproc.questions, live.questions))
    same = all(key(a) == key(b) for a, b in pairs) and len(inproc.questions) == len(live.questions)
    lower = sum(b.hits < a.hits for a, b in pairs)
    higher = sum(b.hits > a.hits for a, b in pairs)
    convs = sorted({q.conversation for q in inproc.questions})
    tenant = "one tenant for all" if live.settings.get("shared_tenant") else "one tenant per conversation"
    return (f"\nLoCoMo in-process vs live proxy ({', '.join(convs)}; {len(pairs)} questions; {tenant}):\n"
            f"  in-process recall {inproc.recall():.3f}   live recall {live.recall():.3f}   "
            f"difference {live.recall() - inproc.recall():+.3f}\n" + live.live_line(lower, higher, "less / more evidence", same))
