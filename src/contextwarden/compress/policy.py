"""What the policy reads beyond one request: a session's rhythm (when the provider writes the prefix again
anyway, a rewrite costs nothing extra: a *free moment*), and what a tenant's sessions taught clearing
(:class:`LearnedPolicy`: which tools' and paths' cleared output the model fetched again).

The request time is the trace's own when replaying (``ctx.notes["replay"]["ts"]``), the wall clock
live, so a replay sees the idle gaps the session had. Compaction records each request's time per
session (namespace ``compaction_seen``, its cost model's request rhythm); clearing, which runs before
it, reads the previous request's time there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import compress, count
from operator import itemgetter
from typing import Any

from contextwarden.wire.cost import LOOKBACK_BLOCKS
from contextwarden.wire.dialects import NO_PROVIDER
from contextwarden.wire.tokens import starts_turn, strips_thinking, turn_start_of

NS_SEEN = "compaction_seen"  # per session: the last request's time, the streak of warm requests


def request_time(ctx: Any) -> float:
    """The request's time: the trace's when replaying, else now."""
    rep = ctx.notes.get("replay") if ctx.notes else None
    ts = rep.get("ts") if isinstance(rep, dict) else None
    return float(ts) if isinstance(ts, (int, float)) and ts else time.time()


def prefix_expired(ctx: Any, store: Any, key: str, ttl: float) -> bool:
    """Whether the session's previous request came more than ``ttl`` seconds before this one, or to
    another model (the cache is the model's own): whatever is sent now is written again. False for a
    first request."""
    seen = store.get(NS_SEEN, key) or {}
    last = seen.get("last")
    return isinstance(last, (int, float)) and (request_time(ctx) - last > ttl or seen.get("model", ctx.model) != ctx.model)


def free_from(ctx: Any, store: Any, key: str, ttl: float) -> int | None:
    """The first message from which the provider writes this request's prompt again whatever is sent (a
    free moment: a rewrite from there on costs nothing extra), or None. 0 when the cached prefix has
    expired; when this request starts a new turn and the model drops earlier turns' thinking blocks, the
    first message of the previous turn that held one (the previous request's cached prefix differs from
    there on: wire.cost), or 0 when that is more than the provider's lookback (20 blocks) before the last
    message, the breakpoint a client like Claude Code sets: no cached entry but the system prompt's is
    found then."""
    if prefix_expired(ctx, store, key, ttl):
        return 0
    body = ctx.original if isinstance(ctx.original, dict) else {}
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs or not starts_turn(msgs[-1]) \
            or not strips_thinking(str(body.get("model") or "")) or ctx.notes.get("provider", NO_PROVIDER).keeps_thinking:
        return None
    kept = ctx.history.tokens_kept if ctx.history is not None else None
    if not kept or kept[0] is not msgs:  # (not counted: the count failed, and the request goes on without it)
        return None
    # the original's per-message counts (thinking tokens second): a C-speed scan
    start = turn_start_of(kept[1][:-1])
    i = next(compress(count(start), map(itemgetter(1), kept[1][start:-1])), None)
    if i is None:
        return None
    blocks = sum(sum(not _thinking(b) for b in m["content"]) if isinstance(m, dict) and isinstance(m.get("content"), list)
                 else 1 for m in msgs[i:])  # (as the provider counts them: without the dropped thinking)
    return i if blocks <= LOOKBACK_BLOCKS else 0


def _thinking(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") in ("thinking", "redacted_thinking")


# ---------------------------------------------------------------------------- the learned policy

NS_POLICY = "policy"  # per tenant: what its sessions taught clearing
MAX_TOOLS = 32  # tools remembered per tenant (the least active out)
MAX_PATHS = 64  # paths remembered per tenant (the oldest out)
KEEP_MIN = 2  # a tool's results are kept whole after this many fetched again ...
KEEP_RATE = 0.25  # ... once that is at least this share of its cleared results


@dataclass(frozen=True)
class ToolCounts:
    cleared: int = 0  # results of the tool a clearing step took
    refetched: int = 0  # of those, fetched again: re-read, re-run or recalled by the id the stub names


@dataclass(frozen=True)
class LearnedPolicy:
    """What one tenant's sessions taught clearing: per tool, how often its cleared results were
    fetched again (a tool whose results come back keeps them whole), and the paths whose cleared output
    was fetched again (their Reads kept whole). Bounded (MAX_TOOLS, MAX_PATHS); never crosses tenants:
    stored under the tenant's own key in the runtime's state (SQLite, or Redis shared by replicas)."""

    tools: dict[str, ToolCounts] = field(default_factory=dict)
    paths: dict[str, int] = field(default_factory=dict)  # path -> times fetched again, the latest last
    updated: float = 0.0

    def keeps_tool(self, tool: str) -> bool:
        c = self.tools.get(tool)
        return c is not None and c.refetched >= KEEP_MIN and c.refetched >= KEEP_RATE * c.cleared

    def keeps_path(self, path: str | None) -> bool:
        return bool(path) and path in self.paths

    def learned(self, cleared: dict[str, int], refetched: list[tuple[str, str | None]], now: float) -> LearnedPolicy:
        """A copy with these counts added, within its bounds."""
        tools = dict(self.tools)
        for tool, n in cleared.items():
            c = tools.get(tool, ToolCounts())
            tools[tool] = ToolCounts(c.cleared + n, c.refetched)
        paths = dict(self.paths)
        for tool, path in refetched:
            c = tools.get(tool, ToolCounts())
            tools[tool] = ToolCounts(max(c.cleared, c.refetched + 1), c.refetched + 1)
            if path:
                paths[path] = paths.pop(path, 0) + 1
        if len(tools) > MAX_TOOLS:
            tools = dict(sorted(tools.items(), key=lambda kv: (kv[1].refetched, kv[1].cleared), reverse=True)[:MAX_TOOLS])
        while len(paths) > MAX_PATHS:
            paths.pop(next(iter(paths)))
        return LearnedPolicy(tools, paths, now)

    def to_dict(self) -> dict[str, Any]:
        return {"tools": {k: [v.cleared, v.refetched] for k, v in self.tools.items()}, "paths": dict(self.paths),
                "updated": self.updated}

    @classmethod
    def from_dict(cls, d: Any) -> LearnedPolicy:
        if not isinstance(d, dict):
            return cls()
        tools = {str(k): ToolCounts(int(v[0]), int(v[1])) for k, v in (d.get("tools") or {}).items()
                 if isinstance(v, list) and len(v) == 2}
        return cls(tools, {str(k): int(v) for k, v in (d.get("paths") or {}).items()}, float(d.get("updated") or 0.0))


def load(store: Any, tenant: str) -> LearnedPolicy:
    """The tenant's learned policy (empty when nothing was learned)."""
    return LearnedPolicy.from_dict(store.get(NS_POLICY, tenant))


def learn(store: Any, tenant: str, cleared: dict[str, int], refetched: list[tuple[str, str | None]], now: float) -> LearnedPolicy:
    """Add what one request showed, atomically (replicas learn into the same record)."""
    got = store.update(NS_POLICY, tenant, lambda cur: LearnedPolicy.from_dict(cur).learned(cleared, refetched, now).to_dict())
    return LearnedPolicy.from_dict(got)


def describe(tenant: str, p: LearnedPolicy) -> str:
    """``contextwarden policy show``: one tenant's policy, as a person reads it."""
    out = [f"tenant {tenant}: learned {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(p.updated)) if p.updated else 'nothing yet'}"]
    if p.tools:
        out.append("  tool            cleared  fetched again  clearing")
        for tool, c in sorted(p.tools.items(), key=lambda kv: (-kv[1].refetched, -kv[1].cleared, kv[0])):
            out.append(f"  {tool[:14]:<14} {c.cleared:>8}  {c.refetched:>13}  {'keeps its results whole' if p.keeps_tool(tool) else 'clears'}")
    if p.paths:
        out.append("  paths whose cleared output came back (their Reads kept whole):")
        out.extend(f"    {path}  ({n}x)" for path, n in reversed(list(p.paths.items())))
    return "\n".join(out)
