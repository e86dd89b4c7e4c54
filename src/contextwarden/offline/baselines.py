"""The field's context managers beside ours, on the same traces, through the same pipeline.

``run(trace)`` replays one trace once per baseline (each a profile: the stages decide, the same
replay bills and counts fidelity) and returns the reports; ``table(rows)`` is the one comparison
table: cost, cost + penalty, lost edit sources, lost references, requests rewritten.

- ``client``: the client as it is (the original side of any run: nothing lost, no penalty);
- ``clear_tool_uses``: Anthropic's ``clear_tool_uses_20250919`` with its documented defaults
  (trigger 100K input tokens, keep 3 tool uses), without and with ``clear_at_least`` (50K);
- ``observation masking``: every tool result but the last 10 replaced by a placeholder;
- ``truncation``: the oldest turns dropped until the request fits the tokens our default sends;
- our profiles ``claude-code-conservative`` and ``claude-code`` (the default).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from contextwarden.plugins import baselines as truncation

from .replay import ReplayReport, _pct, _render, lost_cell, replay

DEFAULT = "default"
# (label, profile); the default runs first: the truncation baseline cuts to what it sent
BASELINES: list[tuple[str, str]] = [
    ("claude-code (default)", DEFAULT),
    ("claude-code-conservative", "claude-code-conservative"),
    ("clear_tool_uses (100K, keep 3)", "baseline-clear-tool-uses"),
    ("clear_tool_uses (100K, keep 3, at least 50K)", "baseline-clear-tool-uses-at-least"),
    ("observation masking (last 10)", "baseline-observation-masking"),
    ("last-N truncation (to our tokens)", "baseline-truncation"),
]
NAMES = {p: label for label, p in BASELINES}


def run(trace: str | Path, only: list[str] | None = None, targets: list[int] | None = None,
        progress: Callable[[str], None] | None = None, **kw: Any) -> list[tuple[str, ReplayReport]]:
    """Replay ``trace`` with every baseline (``only``: these profiles). ``targets``: the default's tokens
    per request when it is not run here (the truncation baseline needs them)."""
    out: list[tuple[str, ReplayReport]] = []
    for label, profile in BASELINES:
        if only and profile not in only:
            continue
        if progress:
            progress(label)
        extra = None
        if profile == "baseline-truncation":
            if targets is None:
                raise ValueError("the truncation baseline needs the default profile's tokens (run it too, or pass targets)")
            extra = [(truncation.name, truncation)]
        rep = replay(trace, profile=profile, targets=targets if extra else None, extra_plugins=extra, **kw)
        if profile == DEFAULT:
            targets = [r.tokens_sent for r in rep.results]
        out.append((label, rep))
    return out


def row(label: str, t: dict[str, Any], trace: str, client: bool = False) -> dict[str, Any]:
    """One line of the table from a report's totals (``client``: the original side of it)."""
    fid = t["fidelity"]
    cost = t["cost_original"] if client else t["cost_ours"]
    plus = t["cost_original"] if client else t["cost_ours_plus_penalty"]
    return {"trace": trace, "baseline": label, "cost_client": t["cost_original"], "cost": cost, "cost_plus_penalty": plus,
            "sources": fid["sources"], "sources_lost": 0 if client else fid["sources_lost"],
            "refs": fid["refs"], "refs_lost": 0 if client else fid["refs_lost"],
            "rewritten": 0 if client else t["rewritten"], "requests": t["requests"],
            "invalid": 0 if client else t["validator_rejected"] + t["sent_invalid"],
            "by_tool": {} if client else fid["by_tool"], "by_stage": {} if client else fid["by_stage"]}


def rows(trace: str, reports: list[tuple[str, ReplayReport]]) -> list[dict[str, Any]]:
    out = [row("client as it is", reports[0][1].totals(), trace, client=True)] if reports else []
    return out + [row(label, rep.totals(), trace) for label, rep in reports]


def merge(parts: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of separate runs as one table: by trace, then the client, our profiles and the baselines in
    BASELINES order; one client row per trace."""
    order = ["client as it is"] + [label for label, _ in BASELINES]
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for rows_ in parts:
        for r in rows_:
            seen.setdefault((r["trace"], r["baseline"]), r)
    return sorted(seen.values(), key=lambda r: (r["trace"], order.index(r["baseline"]) if r["baseline"] in order else 99))


def _cells(r: dict[str, Any]) -> tuple[str, ...]:
    return (r["trace"], r["baseline"], f"{r['cost']:.2f}", _pct(r["cost"], r["cost_client"]), f"{r['cost_plus_penalty']:.2f}",
            _pct(r["cost_plus_penalty"], r["cost_client"]), lost_cell(r, "sources"), lost_cell(r, "refs"),
            f"{r['rewritten']}/{r['requests']}")


HEAD = ("trace", "baseline", "cost $", "Δ cost", "cost + penalty $", "Δ", "lost edit sources", "lost references", "rewritten")


def table(rows_: list[dict[str, Any]]) -> str:
    return _render([(*HEAD, "invalid")] + [(*_cells(r), str(r["invalid"])) for r in rows_])


def markdown(rows_: list[dict[str, Any]]) -> str:
    out = ["| " + " | ".join(HEAD) + " |", "| --- | --- |" + " ---: |" * (len(HEAD) - 2)]
    return "\n".join(out + ["| " + " | ".join(_cells(r)) + " |" for r in rows_])
