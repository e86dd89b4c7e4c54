"""What the policy reads beyond one request: a session's rhythm (when the provider writes the prefix again
anyway, a rewrite costs nothing extra: a *free moment*), and what a tenant's sessions taught clearing
(:class:`LearnedPolicy`: which tools' and paths' cleared output the model fetched again, and which paths'
Reads and which tools' results it never used once it had moved on).

The request time is the trace's own when replaying (``ctx.notes["replay"]["ts"]``), the wall clock
live, so a replay sees the idle gaps the session had. Compaction records each request's time per
session (namespace ``compaction_seen``, its cost model's request rhythm); clearing, which runs before
it, reads the previous request's time there.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from itertools import compress, count
from operator import itemgetter
from typing import Any

from contextwarden.wire.cost import LOOKBACK_BLOCKS
from contextwarden.wire.dialects import NO_PROVIDER, dialect
from contextwarden.wire.tokens import marks, starts_turn, strips_thinking, turn_start_of
from contextwarden.wire.workingset import READ_TOOLS

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
    message, the breakpoint a client like Claude Code sets, and the ``breakpoints`` stage does not mark the
    turn starts: no cached entry but the system prompt's is found then."""
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
    return i if blocks <= LOOKBACK_BLOCKS or _turns_marked(ctx) else 0


def _turns_marked(ctx: Any) -> bool:
    """Whether the ``breakpoints`` stage marks this request's turn starts: the previous turn's start is then a
    breakpoint, and the provider reads the prompt up to it however far back it is."""
    return marks(dialect(ctx.api), ctx.model, ctx.notes.get("provider", NO_PROVIDER)) and ctx.runtime.runs("breakpoints")


def _thinking(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") in ("thinking", "redacted_thinking")


# ---------------------------------------------------------------------------- the learned policy

NS_POLICY = "policy"  # per tenant: what its sessions taught clearing
MAX_TOOLS = 32  # tools remembered per tenant (the least active out)
MAX_PATHS = 64  # paths remembered per tenant (the oldest out)
MAX_READS = 256  # subjects (paths read, tools) followed per tenant (the least recently read out)
SHOW_LEFT = 20  # left paths `policy show` lists (the latest first)
MANY = "*"  # a path's reads came from more than one session
LATE_ANSWERS = 8  # a Read the model uses more than this many answers after reading it is used late
# an agent's instruction files (a project's rules for the model, whichever agent's: Claude Code's CLAUDE.md and
# CLAUDE.local.md, AGENTS.md / AGENT.md, GEMINI.md, aider's CONVENTIONS.md, a workspace's AI_*.md guides, Copilot's
# copilot-instructions.md, Cursor's, Windsurf's and Cline's rules): followed, not quoted, so no session shows them
# used late; never left (docs/REPLAY.md, "Instruction files")
INSTRUCTION_FILE = re.compile(r"(^|[/\\])((CLAUDE(\.local)?|AGENTS?|GEMINI|CONVENTIONS|AI_[A-Z0-9_]+)\.md"
                              r"|copilot-instructions\.md|\.(cursor|windsurf|cline)rules)$"
                              r"|[/\\]\.cursor[/\\]rules[/\\][^/\\]+\.mdc?$", re.IGNORECASE)
TOOL = "tool:"  # the subject of another tool's results than a Read's: TOOL + the tool's name
LEFT_TOOL_MIN = 5  # a tool's results are left only once this many of them were counted
KEEP_MIN = 2  # a tool's results are kept whole after this many fetched again ...
KEEP_RATE = 0.25  # ... once that is at least this share of its cleared results


def subject(tool: str, path: str | None) -> str | None:
    """What the policy follows a result by: a Read's path (None without one), else its tool (``TOOL`` + name;
    None without a name)."""
    return path if tool in READ_TOOLS else TOOL + tool if tool else None


@dataclass(frozen=True)
class ToolCounts:
    cleared: int = 0  # results of the tool a clearing step took
    refetched: int = 0  # of those, fetched again: re-read, re-run or recalled by the id the stub names


@dataclass(frozen=True)
class LearnedPolicy:
    """What one tenant's sessions taught clearing: per tool, how often its cleared results were
    fetched again (a tool whose results come back keeps them whole); the paths whose cleared output
    was fetched again (their Reads kept whole); per *subject* (a path read, or a tool other than Read:
    :func:`subject`), how many of its results the model used late, more than LATE_ANSWERS answers after reading
    them, and the session that read it (a subject another session read and no session used late is *left*: a
    guide read at the start, a file looked at once, a tool whose output is read once and acted on; its results go
    at a free moment; a session's own results are no evidence for itself; an instruction file is never left, nor
    a tool counted fewer than LEFT_TOOL_MIN times or whose cleared results came back). Bounded (MAX_TOOLS,
    MAX_PATHS, MAX_READS); never crosses tenants: stored under the tenant's own
    key in the runtime's state (SQLite, or Redis shared by replicas)."""

    tools: dict[str, ToolCounts] = field(default_factory=dict)
    paths: dict[str, int] = field(default_factory=dict)  # path -> times fetched again, the latest last
    updated: float = 0.0
    # subject -> (results, of those used late, the session that read it or MANY), the latest last
    reads: dict[str, tuple[int, int, str]] = field(default_factory=dict)

    def keeps_tool(self, tool: str) -> bool:
        c = self.tools.get(tool)
        return c is not None and c.refetched >= KEEP_MIN and c.refetched >= KEEP_RATE * c.cleared

    def keeps_path(self, path: str | None) -> bool:
        return bool(path) and path in self.paths

    def leaves(self, subject: str | None, session: str = "") -> bool:
        """Whether the model left this subject's results (:func:`subject`): read by another session than
        ``session``, never used late, never fetched again, not an instruction file."""
        got = self.reads.get(subject) if subject else None
        return subject is not None and got is not None and got[2] != session and self._left(subject, got)

    def _left(self, subject: str, got: tuple[int, int, str]) -> bool:
        """A subject no session used late and none fetched again (whoever read it): a path not an instruction
        file, a tool counted at least LEFT_TOOL_MIN times."""
        if subject.startswith(TOOL):
            return not got[1] and got[0] >= LEFT_TOOL_MIN and not self.keeps_tool(subject[len(TOOL):])
        return not got[1] and subject not in self.paths and not INSTRUCTION_FILE.search(subject)

    def learned(self, cleared: dict[str, int], refetched: list[tuple[str, str | None]], now: float,
                read: tuple[str, ...] = (), late: tuple[str, ...] = (), session: str = "") -> LearnedPolicy:
        """A copy with these counts added (``read``: the subjects of new results; ``late``: of results used
        late; both by ``session``), within its bounds."""
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
        reads = dict(self.reads)
        for path, n, m in [*((p, 1, 0) for p in read), *((p, 0, 1) for p in late)]:
            r, u, by = reads.pop(path, (0, 0, session))
            reads[path] = (max(r + n, 1), u + m, by if by == session else MANY)
        while len(reads) > MAX_READS:
            reads.pop(next(iter(reads)))
        return LearnedPolicy(tools, paths, now, reads)

    def to_dict(self) -> dict[str, Any]:
        return {"tools": {k: [v.cleared, v.refetched] for k, v in self.tools.items()}, "paths": dict(self.paths),
                "updated": self.updated, "reads": {k: list(v) for k, v in self.reads.items()}}

    @classmethod
    def from_dict(cls, d: Any) -> LearnedPolicy:
        if not isinstance(d, dict):
            return cls()
        tools = {str(k): ToolCounts(int(v[0]), int(v[1])) for k, v in (d.get("tools") or {}).items()
                 if isinstance(v, list) and len(v) == 2}
        reads = {str(k): (int(v[0]), int(v[1]), str(v[2])) for k, v in (d.get("reads") or {}).items()
                 if isinstance(v, list) and len(v) == 3}
        return cls(tools, {str(k): int(v) for k, v in (d.get("paths") or {}).items()}, float(d.get("updated") or 0.0), reads)


def load(store: Any, tenant: str) -> LearnedPolicy:
    """The tenant's learned policy (empty when nothing was learned), parsed once each time it changes."""
    return store.view(NS_POLICY, tenant, LearnedPolicy.from_dict)


def learn(store: Any, tenant: str, cleared: dict[str, int], refetched: list[tuple[str, str | None]], now: float,
          read: tuple[str, ...] = (), late: tuple[str, ...] = (), session: str = "") -> LearnedPolicy:
    """Add what one request of ``session`` showed, atomically (replicas learn into the same record)."""
    made: list[LearnedPolicy] = []

    def add(cur: Any) -> dict[str, Any]:
        made.append(LearnedPolicy.from_dict(cur).learned(cleared, refetched, now, read, late, session))
        return made[-1].to_dict()

    got = store.update(NS_POLICY, tenant, add)
    return store.view(NS_POLICY, tenant, lambda _: made[-1], got)  # (what it stored, as the next load reads it)


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
    tools = {k: got for k, got in p.reads.items() if k.startswith(TOOL)}
    if tools:
        out.append(f"  results read, by tool (used late: more than {LATE_ANSWERS} answers after; left: none used late, "
                   f"they go at a free moment in another session):")
        out.extend(f"    {k[len(TOOL):]:<14} {got[0]:>6} read  {got[1]:>4} used late  {_tool_state(p, k, got)}".rstrip()
                   for k, got in sorted(tools.items(), key=lambda kv: (-kv[1][0], kv[0])))
    reads = {k: got for k, got in p.reads.items() if not k.startswith(TOOL)}
    left = [path for path, got in reversed(list(reads.items())) if p._left(path, got)]
    if reads:
        out.append(f"  paths read: {len(reads)}; used more than {LATE_ANSWERS} answers after a Read: "
                   f"{sum(1 for _, u, _ in reads.values() if u)}; left (their Reads go at a free moment in another "
                   f"session): {len(left)}")
        out.extend(f"    {path}  (read {reads[path][0]}x)" for path in left[:SHOW_LEFT])
        if len(left) > SHOW_LEFT:
            out.append(f"    ... and {len(left) - SHOW_LEFT} more (--json lists them all)")
    return "\n".join(out)


def _tool_state(p: LearnedPolicy, subject: str, got: tuple[int, int, str]) -> str:
    """What ``policy show`` says of a tool: left, or why not (nothing when some of its results were used late)."""
    if p._left(subject, got):
        return "left"
    if got[1]:
        return ""
    return f"(fewer than {LEFT_TOOL_MIN} seen)" if got[0] < LEFT_TOOL_MIN else "(kept whole: fetched again)"
