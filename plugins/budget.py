"""Built-in stage ``budget``: token budgets per session and per agent, with graded levels.

Use is the provider's reported input per completed turn (``usage.total_input``; without usage, our
calibrated estimate), accumulated in ``cw_turn_complete`` in the runtime state (namespace ``budget``).
Before each request the stage sets ``ctx.notes["level"]`` from use against ``budget.session_tokens`` /
``budget.agent_tokens``: NORMAL, REDUCED from ``reduced_at`` and MINIMAL from ``minimal_at`` (clearing
and compaction tighten), BLOCKED at 100% (the proxy answers a 429 with ``retry-after`` in the
provider's own error format). It runs first, and emits a ``budget`` event every request."""

from __future__ import annotations

import enum
import time
from typing import Any

from contextwarden import hookimpl
from contextwarden.models import ApiKind
from contextwarden.wire.dialects import dialect

NS = "budget"


class Level(enum.StrEnum):
    """A budget level; compares equal to its name (``ctx.notes["level"] == "REDUCED"``)."""

    NORMAL = "NORMAL"
    REDUCED = "REDUCED"
    MINIMAL = "MINIMAL"
    BLOCKED = "BLOCKED"

    @property
    def rank(self) -> int:
        return list(Level).index(self)  # (the order of the members)


def level_for(used: int, limit: int, reduced_at: float, minimal_at: float) -> Level:
    """The level of ``used`` tokens against ``limit`` (0 = no limit)."""
    if limit <= 0:
        return Level.NORMAL
    frac = used / limit
    if frac >= 1.0:
        return Level.BLOCKED
    if frac >= minimal_at:
        return Level.MINIMAL
    if frac >= reduced_at:
        return Level.REDUCED
    return Level.NORMAL


def scopes(ctx) -> list[tuple[str, str, int]]:
    """(scope, state key, limit) of every budget that applies to the request."""
    b = ctx.settings.budget
    out = []
    if b.session_tokens > 0:
        out.append(("session", f"session:{ctx.session}", b.session_tokens))
    if b.agent_tokens > 0:
        # with one agent per session (agent_rule: session) the agent's use is the session's
        key = f"agent:{ctx.agent}" if ctx.agent != ctx.session else f"session:{ctx.session}"
        out.append(("agent", key, b.agent_tokens))
    return out


def used(state, key: str) -> int:
    rec = state.get(NS, key)
    return int(rec.get("used", 0)) if isinstance(rec, dict) else 0


def add_use(state, key: str, tokens: int) -> None:
    """Add ``tokens`` to a budget's use."""
    now = time.time()
    # (atomic in the store: concurrent turn workers, and replicas sharing it, count into one total)
    state.update(NS, key, lambda cur: {"used": int((cur or {}).get("used", 0)) + int(tokens),
                                       "turns": int((cur or {}).get("turns", 0)) + 1, "updated": now})


def blocked_response(api: ApiKind, stream: bool, message: str, retry_after_s: int) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers) of a BLOCKED answer in the provider's own error format."""
    body, kind = dialect(api).error_answer(message, stream)  # the provider's own 429 (a stream: an SSE error)
    return 429, body, {"retry-after": str(int(retry_after_s)), "x-contextwarden-blocked": "budget", **kind}


@hookimpl
def cw_request(ctx) -> None:
    b = ctx.settings.budget
    if not b.enabled:
        return
    state = ctx.runtime.state
    worst, worst_scope = Level.NORMAL, None
    report = []
    for scope, key, limit in scopes(ctx):
        u = used(state, key)
        lvl = level_for(u, limit, b.reduced_at, b.minimal_at)
        report.append({"scope": scope, "key": key, "used": u, "limit": limit, "level": lvl.value})
        if worst_scope is None or lvl.rank > worst.rank:
            worst, worst_scope = lvl, report[-1]
    ctx.notes["level"] = worst
    ctx.notes["budget"] = report
    top = worst_scope or {}
    ctx.emit("budget", level=worst.value, used=top.get("used"), limit=top.get("limit"), scope=top.get("scope"),
             scopes=report)
    if worst is Level.BLOCKED and worst_scope is not None:
        what = "session" if worst_scope["scope"] == "session" else f"agent {ctx.agent}"
        msg = (f"contextwarden: the token budget of this {what} is used up "
               f"({worst_scope['used']:,} of {worst_scope['limit']:,} input tokens). "
               f"Raise budget.{worst_scope['scope']}_tokens in the profile (or at run time) to continue.")
        status, body, headers = blocked_response(ctx.api, ctx.stream, msg, b.retry_after_s)
        ctx.block(status, body, headers)


@hookimpl
def cw_turn_complete(ctx, turn) -> None:
    if ctx is None or not ctx.settings.budget.enabled or ctx.blocked is not None:
        return
    tokens = getattr(getattr(turn, "usage", None), "total_input", None)
    if tokens is None:
        if getattr(turn, "error", None):
            return  # the provider refused the request: nothing was billed
        est = ctx.tokens_out if ctx.tokens_out is not None else ctx.tokens_in
        if not est:
            return
        tokens = ctx.runtime.tokens.calibrated(ctx.model, est)
    if tokens <= 0:
        return
    # both keys, whatever the limits now: a limit set later at run time sees the use so far
    add_use(ctx.runtime.state, f"session:{ctx.session}", tokens)
    if ctx.agent != ctx.session:
        add_use(ctx.runtime.state, f"agent:{ctx.agent}", tokens)


def snapshot(state) -> dict[str, Any]:
    """Every budget's use, by key (for the TUI and tests)."""
    return dict(state.items(NS))
