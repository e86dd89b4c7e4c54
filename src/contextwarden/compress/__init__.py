"""Tool-output compression: what the ``compression`` stage puts in place of a large tool result (the
tiers and compressors: docs/compression.md). Pure: the same output and task give the same text."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from contextwarden.memory.wayback import way_back
from contextwarden.memory.words import tokenize
from contextwarden.wire.conversation import input_hint

from .cleanup import cap_long_lines, clean_lines, cleanup, collapse_weighted
from .jsonshape import compress_json, parse
from .listing import compress_listing, group, kind_of
from .logs import classify, compress_log, is_log
from .relevant import compress_relevant

PREFIX = "[contextwarden compressed this "
MARK = "[… "  # how every note of what was left out starts
LISTING_TOOLS = frozenset({"Grep", "Glob", "LS", "grep", "glob", "ls", "find", "list_files", "search_files"})
LISTING_COMMANDS = re.compile(r"^\s*(?:cd [^;&|]+(?:&&|;)\s*)?(?:ls|find|fd|grep|egrep|rg|ag|tree|git ls-files|git grep|locate)\b")
WHAT = {
    "cleanup": "clean-up: terminal codes, overwritten and repeated lines",
    "log": "errors, failures, warnings with context, summary lines, head and tail kept",
    "json": "structure kept, long arrays and strings cut",
    "listing": "grouped and capped; NOT complete",
    "relevant": "the parts most relevant to the task kept, in order",
}


@dataclass(frozen=True, slots=True)
class Compressed:
    body: str
    kind: str  # cleanup | log | json | listing | relevant
    facts: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Limits:
    medium_chars: int = 1_024
    large_chars: int = 5_120
    keep_ratio: float = 0.25  # a large output keeps about this share ...
    min_keep_chars: int = 2_000  # ... but at least this many characters
    max_keep_chars: int = 8_000  # ... and at most this many (every error line is kept even past it)
    min_gain: float = 0.2  # below this share saved (first line included), the output is left as it was


def _command(tool_input: Any) -> str:
    if isinstance(tool_input, dict):
        c = tool_input.get("command") or tool_input.get("cmd")
        if isinstance(c, list):
            c = " ".join(x for x in c if isinstance(x, str))
        return c if isinstance(c, str) else ""
    return ""


def compress(text: str, *, tool: str = "", tool_input: Any = None, query: str = "", limits: Limits = Limits()) -> Compressed | None:
    """The compressed body of a tool output, or None when it stays as it is (small, or not worth it).
    The compressor of a large output is chosen by its content: JSON, then a listing when the tool or
    command is one (or the lines are grep's), then a log when lines say error / warning / sum up, then
    any other listing, then the relevant chunks."""
    n = len(text)
    if n < limits.medium_chars:
        return None
    if n < limits.large_chars:
        body = cleanup(text)
        if len(body) > n * (1 - limits.min_gain):
            return None
        return Compressed(body, "cleanup", {"chars": n, "lines": text.count("\n") + 1, "kept_lines": _shown(body)})
    budget = int(min(limits.max_keep_chars, max(limits.min_keep_chars, n * limits.keep_ratio)))
    lines = clean_lines(text)
    value = parse(text)
    if value is None:
        lines = cap_long_lines(lines)
    listing = kind_of(lines) if value is None else None
    if isinstance(value, (list, dict)):
        got = compress_json(text, value, budget)
        if got is None:
            return None
        kind, (body, facts) = "json", got
    elif listing is not None and (tool in LISTING_TOOLS or LISTING_COMMANDS.match(_command(tool_input)) or listing == "grep"):
        kind, (body, facts) = "listing", _listing(lines, listing, budget, _terms(tool_input, query))
    else:
        col, weights = collapse_weighted(lines)
        classes = classify(col)
        if is_log(classes):
            kind, (body, facts) = "log", compress_log(col, budget, classes, weights)
        elif listing is not None:
            kind, (body, facts) = "listing", _listing(lines, listing, budget, _terms(tool_input, query))
        else:
            kind, (body, facts) = "relevant", compress_relevant(col, f"{input_hint(tool_input, 400)}\n{query}", budget, weights)
    if len(body) > n * (1 - limits.min_gain):
        return None
    return Compressed(body, kind, {**facts, "chars": n, "lines": len(lines), "kept_lines": min(_shown(body), len(lines))})


def _shown(body: str) -> int:
    """The lines of a compressed body that are the output's own (not notes of what was left out)."""
    return sum(1 for x in body.split("\n") if not x.startswith(MARK))


def _terms(tool_input: Any, query: str) -> tuple[str, ...]:
    """The task's words a listing entry may name (memory's terms, stemmed, 4 characters or more)."""
    return tuple(sorted({t for t in tokenize(f"{input_hint(tool_input, 400)}\n{query}") if len(t) >= 4 and "/" not in t}))[:40]


def _listing(lines: list[str], kind: str, budget: int, terms: tuple[str, ...]) -> tuple[str, dict]:
    """The listing with the most entries per group and groups that fits the budget (or the smallest)."""
    grouped = group(lines, kind)
    for per_group, groups in ((5, 40), (3, 30), (2, 20), (1, 15)):
        body, facts = compress_listing(grouped, kind, per_group, groups, terms)
        if len(body) <= budget:
            break
    return body, facts


def render(c: Compressed, tool: str, tool_input: Any, original_chars: int, mid: str, how: str = "") -> str:
    """The body under its first line: what this is, how much of it is here, how to get all of it."""
    hint = input_hint(tool_input, 60)
    what = f"{tool or 'tool'} result" + (f" for {hint}" if hint else "")
    pct = max(1, round(100 * len(c.body) / max(1, original_chars))) if len(c.body) < original_chars else 100
    lines = f"{c.facts['kept_lines']:,} of {c.facts['lines']:,} lines"
    return (f"{PREFIX}{what} ({WHAT[c.kind]}; kept {pct}% of {original_chars:,} characters; {lines}); the whole "
            f"output is kept. Memory id {mid}: {way_back(mid, how)}.]\n{c.body}")
