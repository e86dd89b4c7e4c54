"""What the LoCoMo and LongMemEval replays share: the client they drive (the pipeline in-process,
:class:`InProcess`, or a live proxy, :class:`~.eval_live.Live`), the outgoing text, the baselines,
profiles and tables.

A turn counts as *recalled* when its text (whitespace-normalised) is part of the text of the request that
goes upstream when the question is asked: in the kept history, a compaction summary, or injected memory.
The check reads only the outgoing body; the pipeline never sees evidence ids.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ...memory.retrieve import normalise  # noqa: F401 (the evaluations' normalise: retrieval's own)
from ...models.base import ApiKind
from .replay import Replayer, Sent


def _content_texts(content: Any) -> Iterable[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for b in content:
            if isinstance(b, str):
                yield b
            elif isinstance(b, dict):
                if isinstance(b.get("text"), str):
                    yield b["text"]
                if "content" in b:
                    yield from _content_texts(b["content"])
                if isinstance(b.get("output"), str):
                    yield b["output"]


def request_text(wire: dict[str, Any]) -> str:
    """All the text of a request body (system, messages, tool results), normalised."""
    parts: list[str] = []
    for key in ("system", "instructions"):
        parts += list(_content_texts(wire.get(key)))
    msgs = wire.get("messages") if "messages" in wire else wire.get("input")
    if isinstance(msgs, str):
        parts.append(msgs)
    for m in msgs or []:
        if isinstance(m, dict):
            parts += list(_content_texts(m.get("content")))
            if isinstance(m.get("output"), str):
                parts.append(m["output"])
        elif isinstance(m, str):
            parts.append(m)
    return normalise("\n".join(parts))


def contains(haystack: str, text: str) -> bool:
    t = normalise(text)
    return bool(t) and t in haystack


def truncate_to(runtime, api: ApiKind, messages: list[dict], budget: int, model: str | None = None) -> tuple[list[dict], int]:
    """Keep-the-last-N baseline: the longest suffix of ``messages`` whose request fits ``budget`` tokens
    (the last message is always kept). Returns (messages, tokens)."""
    tokens = runtime.tokens
    base = tokens.count_request(api, {"messages": []}, model)
    used = base
    kept = 0
    for m in reversed(messages):
        c = tokens.count_message(api, m, model)
        if kept and used + c > budget:
            break
        used += c
        kept += 1
    return messages[len(messages) - kept:], used


def write_profile(path: Path, window: int, memory: dict[str, Any], compaction: dict[str, Any] | None = None,
                  extra: str = "") -> Path:
    """An evaluation profile: Claude Code's, with the window and memory settings under test, and stage
    budgets generous enough that the machine's load cannot turn a slow stage into a full-history pass.
    ``extra`` is YAML merged section by section."""
    data: dict[str, Any] = {
        "extends": "claude-code", "name": "eval",
        "tokens": {"context_window": window, "calibrate": False},
        "clearing": {"trigger_tokens": window // 2, "clear_at_least": window // 8},
        "compaction": dict(compaction or {}),
        "memory": dict(memory),
        "pipeline": {"stage_budget_ms": 120000},
        "log": {"record_bodies": False},
    }
    for section, values in (yaml.safe_load(extra) or {}).items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    """A plain text table (numbers right-aligned)."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        if isinstance(v, int):
            return f"{v:,}"
        return "" if v is None else str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = [title, "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def body_of(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The request body a replayed turn sends (as :meth:`Replayer.body` builds it)."""
    return {"model": "claude-eval", "max_tokens": 1024, "messages": messages}


@dataclass
class Asked:
    """What reached the upstream when a question was asked: its text (normalised), the memory stage's
    report, tokens sent and the client's request's tokens, the truncation baseline at the same tokens
    (in-process only), and whether the request failed (a stage failure in-process, not answered live)."""

    text: str
    memory: dict[str, Any] = field(default_factory=dict)
    tokens: int = 0
    full_tokens: int = 0
    trunc_text: str = ""
    trunc_tokens: int = 0
    failed: bool = False


def _failed(sent: Sent) -> bool:
    return sent.outcome.reason.startswith(("stage", "invalid"))


class InProcess:
    """The real pipeline in this process (:class:`Replayer`) as the client an evaluation drives."""

    def __init__(self, rp: Replayer) -> None:
        self.rp = rp

    def turn(self, messages: list[dict[str, Any]], reply: str, key: str, session: str) -> bool:
        """Send ``messages``, complete the turn with ``reply``; True when a stage failed on it."""
        sent = self.rp.send(messages, api_key=key, session=session)
        self.rp.complete(sent, reply)
        return _failed(sent)

    def ask(self, messages: list[dict[str, Any]], key: str, session: str) -> Asked:
        """Send a question once ingestion settled; nothing of it is stored."""
        if not self.rp.flush():
            raise RuntimeError("memory ingestion did not finish within the flush timeout")
        sent = self.rp.send(messages, api_key=key, session=session)
        tokens = sent.tokens()
        kept, ttoks = truncate_to(self.rp.runtime, self.rp.api, messages, tokens, sent.ctx.model)
        return Asked(request_text(sent.wire), sent.ctx.notes.get("memory") or {}, tokens, sent.ctx.tokens_in or 0,
                     request_text({"messages": kept}), ttoks, _failed(sent))

    def dropped(self) -> int:
        return self.rp.dropped()


@contextmanager
def eval_replayer(name: str, home: str | Path | None, window: int, memory: dict[str, Any],
                  compaction: dict[str, Any], profile_extra: str = "",
                  embed_cache: str | Path | None = None) -> Iterator[Replayer]:
    """A :class:`Replayer` on an evaluation profile, in ``home`` or a temporary folder, with the
    embedding disk cache attached; closed on exit."""
    with tempfile.TemporaryDirectory(prefix=f"cw-eval-{name}-") as tmp:
        base = Path(home) if home else Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        profile = write_profile(base / f"eval-{name}.yaml", window, memory, compaction, profile_extra)
        rp = Replayer.from_profile(profile, base / "home")
        try:
            svc = rp.memory()
            if svc is not None and embed_cache and svc.embedder is not None:
                svc.embedder.attach_disk(embed_cache)
            yield rp
        finally:
            rp.close()
