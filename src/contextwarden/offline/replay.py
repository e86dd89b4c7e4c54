"""Replays a recorded session through the real pipeline, offline, and bills both sides.

Inputs: a Claude Code session log (``~/.claude/projects/*/<session>.jsonl``: each API call's request
rebuilt from the chain of lines before it, with a stand-in system block sized from the log's usage), or
the proxy's own recorded bodies (``cw_home/bodies/<session>/*.json``). docs/REPLAY.md says how each is
read and what is reported: tokens, the pipeline's outcome, the validator's verdict and the simulated
bill of both sides (:mod:`contextwarden.wire.cost`) on the trace's own timestamps.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from ..compress import policy
from ..core.events import read_log
from ..core.runtime import Runtime
from ..memory import service as memory_service
from ..models.base import ApiKind
from ..request import lifecycle
from ..request.lifecycle import complete, turn_of
from ..request.sessions import CLAUDE_CODE_SESSION
from ..settings import _deep_merge, load_settings
from ..store.statecache import state_cache
from ..wire.cost import DEFAULT_PRICE, Bill, Price, PromptCache, billed_from_usage, boundaries, known_price, price_for
from ..wire.dialects import ANTHROPIC, dialect, validate_rewrite
from ..wire.streams.turn import Usage
from ..wire.workingset import path_of
from .assets import TOKENIZER_WAIT_S, offline_assets, shared_dir
from .fidelity import Fidelity, FidelityCounter, _blocks
from .fidelity import totals as fidelity_totals

CONTINUED = "This session is being continued from a previous conversation"
COMPACT_INSTRUCTION = (
    "[replay stand-in for the client's compaction prompt] Your task is to create a detailed summary of the "
    "conversation so far, paying close attention to the user's explicit requests and your previous actions. "
    "Include the primary request and intent, key technical concepts, files and code sections, errors and fixes, "
    "problem solving, all user messages, pending tasks, the current work and an optional next step.")
ASSUMED_OVERHEAD = 12_000  # stand-in system size when the trace has no usage to fit it from
INPUT_USAGE = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")  # a usage's input parts


@dataclass
class ReplayRequest:
    """One request to replay, as the client sent it."""

    ts: float
    body: dict[str, Any]
    api: ApiKind = ANTHROPIC.kind
    path: str = "/v1/messages?beta=true"
    headers: list[tuple[str, str]] = field(default_factory=list)
    output_tokens: int = 0
    usage: dict[str, Any] | None = None  # the provider's usage for the original request, when known
    response: dict[str, Any] | None = None  # the assistant message that answered it, when known
    kind: str = "request"  # request | sidechain | client-compaction | recorded
    label: str = ""


@dataclass
class Trace:
    path: str
    requests: list[ReplayRequest]
    source: str  # "claude-code-jsonl" | "recorded-bodies"
    lines: int = 0
    skipped_lines: int = 0
    repairs: dict[str, Any] = field(default_factory=dict)  # what was repaired: a count, or a set of ids
    fit: dict[str, float] | None = None  # provider = a + b * estimate
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- Claude Code JSONL


def _ts(s: Any) -> float | None:
    if not isinstance(s, str):
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _text_of(msg: dict) -> str:
    return "\n".join(b.get("text", "") for b in _blocks(msg.get("content")) if b.get("type") == "text")


def _is_synthetic(row: dict) -> bool:
    m = row.get("message") or {}
    return row.get("isApiErrorMessage") or m.get("model") == "<synthetic>"


def _join_roles(msgs: list[dict]) -> list[dict]:
    """Consecutive messages of one role as one message (empty ones left out)."""
    out: list[dict] = []
    for m in msgs:
        if not m["content"]:
            continue
        if out and out[-1]["role"] == m["role"]:
            out[-1]["content"].extend(m["content"])
        else:
            out.append(m)
    return out


def _merge_run(rows: list[dict]) -> list[dict]:
    """Chain rows -> API messages: consecutive lines of one role (the blocks of one assistant message,
    parallel tool results, a prompt after results) become one message, as the client sends them."""
    return _join_roles([{"role": r["message"].get("role"),
                         "content": [dict(b) for b in _blocks(r["message"].get("content"))]} for r in rows])


def _repair(msgs: list[dict], repairs: dict) -> list[dict]:
    """Make the rebuilt messages a body the API accepts: pairs complete, no empty text, user first.

    ``repairs`` gets the ids of tool uses/results dropped because their partner's line was lost."""
    lost_ids = repairs.setdefault("tool_use without its result line", set())
    orphan_ids = repairs.setdefault("tool_result without its tool_use line", set())
    for m in msgs:  # Claude Code logs empty text blocks the API would reject
        m["content"] = [b for b in m["content"] if not (b.get("type") == "text" and not str(b.get("text", "")).strip())]
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        uses = {b.get("id") for b in m["content"] if b.get("type") == "tool_use"}
        nxt = msgs[i + 1] if i + 1 < len(msgs) and msgs[i + 1]["role"] == "user" else None
        answered = {b.get("tool_use_id") for b in nxt["content"] if b.get("type") == "tool_result"} if nxt else set()
        lost = uses - answered
        if lost and i + 1 < len(msgs):
            lost_ids.update(lost)
            m["content"] = [b for b in m["content"] if not (b.get("type") == "tool_use" and b.get("id") in lost)]
        if nxt:
            orphan = answered - uses
            if orphan:
                orphan_ids.update(orphan)
                nxt["content"] = [b for b in nxt["content"] if not (b.get("type") == "tool_result" and b.get("tool_use_id") in orphan)]
    for i, m in enumerate(msgs):  # results in a user message whose predecessor is not an assistant message
        if m["role"] == "user" and (i == 0 or msgs[i - 1]["role"] != "assistant"):
            ids = {b.get("tool_use_id") for b in m["content"] if b.get("type") == "tool_result"}
            if ids:
                orphan_ids.update(ids)
                m["content"] = [b for b in m["content"] if b.get("type") != "tool_result"]
    out = _join_roles(msgs)
    while out and out[0]["role"] != "user":
        out.pop(0)
    return out


def _bump(d: dict, key: str) -> None:
    d[key] = d.get(key, 0) + 1


def _standin_system(tokens: int, counter, sidechain: bool, compaction: bool = False) -> list[dict]:
    head = ("[replay] The session log does not record the client's system prompt and tool definitions; "
            f"this block stands in for their size ({'subagent' if sidechain else 'compaction call' if compaction else 'main agent'}).\n")
    line = "Stand-in line {:05d}: guidance the client sends with every request, identical each time.\n"
    per_line = max(1, counter.count_text(line.format(1)))
    n = max(0, (tokens - counter.count_text(head)) // per_line)
    text = head + "".join(line.format(i) for i in range(n))
    return [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]


def _mark_last(msgs: list[dict]) -> None:
    if msgs and msgs[-1]["content"]:
        msgs[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}


def _fit(points: list[tuple[str, float, float]]) -> tuple[float, float] | None:
    """``provider = a + b * estimate`` from (segment, estimate, provider) of consecutive calls.

    ``b`` is the ratio of growth between consecutive calls of one segment (a chain after a compaction,
    with one model) over steps of at least 1,000 estimated tokens, so fixed overheads cancel; ``a`` is
    the median of ``provider - b * estimate`` over the first segment: the system prompt and tools.
    """
    if len(points) < 3:
        return None
    dp = de = 0.0
    for (s1, e1, p1), (s2, e2, p2) in zip(points, points[1:]):
        if s1 == s2 and e2 - e1 >= 1000 and p2 > p1:
            dp += p2 - p1
            de += e2 - e1
    b = min(1.6, max(0.8, dp / de)) if de else 1.0
    first = sorted(p - b * e for s, e, p in points if s == points[0][0])
    a = first[len(first) // 2]
    return max(0.0, a), b


def _read_rows(path: Path, trace: Trace) -> list[dict]:
    """The log's message lines (truncated lines skipped and counted in ``trace``)."""
    rows: list[dict] = []
    with open(path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            trace.lines += 1
            try:
                r = orjson.loads(raw)
            except orjson.JSONDecodeError:
                trace.skipped_lines += 1  # truncated line
                continue
            if isinstance(r, dict) and r.get("type") in ("user", "assistant") and isinstance(r.get("message"), dict) \
                    and r.get("uuid"):
                rows.append(r)
    return rows


class _Chains:
    """The log's lines by uuid, and the chain of lines before each (where a parent line was lost, the
    line written before it on the same side stands in)."""

    def __init__(self, rows: list[dict], trace: Trace) -> None:
        self.by_uuid = {r["uuid"]: r for r in rows}
        self.prev_in_file: dict[str, dict] = {}
        last_by_side: dict[bool, dict] = {}
        for r in rows:
            side = bool(r.get("isSidechain"))
            if r.get("parentUuid") and r["parentUuid"] not in self.by_uuid and side in last_by_side:
                self.prev_in_file[r["uuid"]] = last_by_side[side]
                _bump(trace.repairs, "parent line lost (linked to the previous line)")
            last_by_side[side] = r

    def parent(self, r: dict) -> dict | None:
        return self.by_uuid.get(r.get("parentUuid")) or self.prev_in_file.get(r["uuid"])

    def chain(self, r: dict) -> list[dict]:
        out, seen = [], set()
        cur: dict | None = r
        while cur is not None and cur["uuid"] not in seen:
            seen.add(cur["uuid"])
            out.append(cur)
            cur = self.parent(cur)
        out.reverse()
        return out


def _compaction_call(root: dict, before: list[tuple[float, list[dict], dict, str]], trace: Trace, counter) -> ReplayRequest:
    """The client's own compaction call before a "continued" ``root``: the latest main-chain history
    before it (its own copy: the earlier request keeps its breakpoint), plus the instruction."""
    _, msgs, response, model = before[-1]
    hist = orjson.loads(orjson.dumps(msgs))
    for m in hist:
        for b in m["content"]:
            b.pop("cache_control", None)
    if response["content"]:
        kept = [dict(b) for b in response["content"] if b.get("type") != "tool_use"]
        hist.append({"role": "assistant", "content": kept or [{"type": "text", "text": "(tool call interrupted by compaction)"}]})
    hist.append({"role": "user", "content": [{"type": "text", "text": COMPACT_INSTRUCTION}]})
    summary = _text_of(root["message"])
    return ReplayRequest(ts=(_ts(root.get("timestamp")) or 0.0) - 1.0, body={"model": model, "messages": _repair(hist, trace.repairs)},
                         output_tokens=counter.count_text(summary, model), kind="client-compaction",
                         label=f"compaction before {root['uuid'][:8]}")


def _finish(trace: Trace, reqs: list[ReplayRequest], fit_points: list[tuple[str, float, float]], counter, session: str) -> None:
    """The stand-in system blocks sized from the fit, Claude Code's breakpoints and headers, time order."""
    fit = _fit(fit_points)
    if fit:
        a, b = fit
        trace.fit = {"a": round(a, 1), "b": round(b, 4), "points": len(fit_points)}
        overhead = int(a / b)
    else:
        overhead = ASSUMED_OVERHEAD
        trace.notes.append(f"no usage to size the stand-in system prompt: assumed {ASSUMED_OVERHEAD} tokens")
    systems = {k: _standin_system(overhead, counter, k == "sidechain", k == "client-compaction")
               for k in ("request", "sidechain", "client-compaction")}
    reqs.sort(key=lambda r: r.ts)
    for r in reqs:
        _mark_last(r.body["messages"])
        r.body = {"model": r.body["model"], "max_tokens": 32000, "system": systems[r.kind],
                  "messages": r.body["messages"],
                  "metadata": {"user_id": f"user_replay_account__session_{session}"}, "stream": True}
        # a fixed placeholder, not a credential: the pipeline derives the replay's tenant from it
        r.headers = [("content-type", "application/json"), ("anthropic-version", "2023-06-01"),
                     ("x-api-key", "replay-placeholder"), ("user-agent", "claude-cli/replay"),
                     (CLAUDE_CODE_SESSION, session)]
    trace.requests = reqs


def load_claude_code(path: Path, counter, compaction_calls: bool = True) -> Trace:
    trace = Trace(str(path), [], "claude-code-jsonl")
    msgs_rows = _read_rows(path, trace)
    chains = _Chains(msgs_rows, trace)
    session = str(next((r.get("sessionId") for r in msgs_rows if r.get("sessionId")), path.stem))
    calls: dict[str, list[dict]] = {}  # API calls: the lines of each assistant message id
    for r in msgs_rows:
        if r["message"].get("role") == "assistant" and not _is_synthetic(r):
            calls.setdefault(r["message"].get("id") or r["uuid"], []).append(r)
    reqs: list[ReplayRequest] = []
    fit_points: list[tuple[str, float, float]] = []
    main_history: list[tuple[float, list[dict], dict, str]] = []  # (ts, messages, response, model) of main-chain calls
    for mid, group in calls.items():
        first = group[0]
        parent = chains.parent(first)
        if parent is None:
            _bump(trace.repairs, "call without a request (no parent line)")
            continue
        rows_before = [x for x in chains.chain(parent) if not _is_synthetic(x)]
        msgs = _repair(_merge_run(rows_before), trace.repairs)
        if not msgs or msgs[-1]["role"] != "user":
            _bump(trace.repairs, "call skipped (history does not end with a user message)")
            continue
        ts = max((t for t in (_ts(x.get("timestamp")) for x in rows_before[-3:]) if t is not None),
                 default=_ts(first.get("timestamp")) or 0.0)
        usage = max((x["message"].get("usage") or {} for x in group), key=lambda u: u.get("output_tokens") or 0)
        response = {"role": "assistant", "content": [b for x in group for b in _blocks(x["message"].get("content"))]}
        model = first["message"].get("model") or "claude-sonnet-4"
        side = bool(first.get("isSidechain"))
        reqs.append(ReplayRequest(ts=ts, body={"model": model, "messages": msgs}, output_tokens=int(usage.get("output_tokens") or 0),
                                  usage=usage or None, response=response, kind="sidechain" if side else "request", label=mid))
        if not side:
            main_history.append((ts, msgs, response, model))
            total = sum(int(usage.get(k) or 0) for k in INPUT_USAGE)
            if total:
                est = counter.count_request(ANTHROPIC, {"model": model, "messages": msgs}, model)
                fit_points.append((f"{rows_before[0]['uuid']}/{model}", est, total))
    if compaction_calls:  # the client's own compaction calls, before each "continued" root
        main_history.sort(key=lambda x: x[0])
        for root in msgs_rows:
            if not root.get("parentUuid") and root["message"].get("role") == "user" and not root.get("isSidechain") \
                    and _text_of(root["message"]).startswith(CONTINUED):
                before = [h for h in main_history if h[0] < (_ts(root.get("timestamp")) or 0.0)]
                if before:
                    reqs.append(_compaction_call(root, before, trace, counter))
    _finish(trace, reqs, fit_points, counter, session)
    return trace


# ---------------------------------------------------------------------------- recorded bodies


def load_recorded(path: Path) -> Trace:
    path = Path(path)
    if (path / "bodies").is_dir():
        path = path / "bodies"
    files = sorted(path.rglob("*.json")) if path.is_dir() else [path]
    usage_by_flow: dict[str, dict] = {}
    for home in {p.parent.parent.parent for p in files} | {p.parent.parent for p in files}:
        log = home / "logs" / "events.jsonl"
        if log.is_file():
            for ev in read_log(log):
                if ev.type == "response" and ev.flow_id and isinstance(ev.data.get("usage"), dict):
                    usage_by_flow[ev.flow_id] = ev.data["usage"]
    trace = Trace(str(path), [], "recorded-bodies")
    for p in files:
        try:
            e = orjson.loads(p.read_bytes())
        except orjson.JSONDecodeError:
            trace.skipped_lines += 1
            continue
        trace.lines += 1
        if not isinstance(e, dict) or not isinstance(e.get("original"), dict):
            trace.skipped_lines += 1
            continue
        usage = usage_by_flow.get(str(e.get("flow_id")))
        headers = [(k, v) for k, v in (e.get("headers") or []) if k.lower() not in ("content-length", "content-encoding")]
        if not any(k.lower() == "content-type" for k, _ in headers):
            headers.append(("content-type", "application/json"))
        trace.requests.append(ReplayRequest(
            ts=float(e.get("ts") or 0.0), body=e["original"], api=ApiKind(e.get("api", "anthropic")),
            path=e.get("path") or "/v1/messages", headers=headers, usage=usage,
            output_tokens=int((usage or {}).get("output_tokens") or 0), kind="recorded", label=str(e.get("flow_id", p.stem))))
    trace.requests.sort(key=lambda r: r.ts)
    if not usage_by_flow:
        trace.notes.append("no event log next to the bodies: output tokens unknown (0)")
    return trace


def load_trace(path: str | Path, counter, **kw) -> Trace:
    p = Path(path)
    if p.is_dir() or p.suffix == ".json":
        return load_recorded(p)
    return load_claude_code(p, counter, **kw)


# ---------------------------------------------------------------------------- replay


@dataclass
class RequestResult:
    index: int
    ts: float
    kind: str
    outcome: str
    messages_original: int
    messages_sent: int
    tokens_original: int
    tokens_sent: int
    original: Bill
    ours: Bill
    problems: list[str] = field(default_factory=list)  # the validator's verdict on what was sent
    stages: dict[str, str] = field(default_factory=dict)  # stage -> status when not ok
    stage_events: dict[str, int] = field(default_factory=dict)  # e.g. compaction: 1
    actual: Bill | None = None  # from the trace's usage, when it has one
    errors: list[str] = field(default_factory=list)  # error events of this request ("where: message")
    memory_items: int = 0  # excerpts the memory stage injected into this request
    memory_tokens: int = 0  # their tokens (our count, as in the memory event)
    fidelity: Fidelity | None = None  # what the recorded answer used that ours lost (contextwarden.offline.fidelity)

    @property
    def rejected(self) -> bool:
        return self.outcome.startswith("invalid rewrite")

    def to_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "original": self.original.to_dict(),
                "ours": self.ours.to_dict(), "actual": self.actual.to_dict() if self.actual else None,
                "fidelity": self.fidelity.to_dict() if self.fidelity else None}


@dataclass
class ReplayReport:
    trace: Trace
    profile: str
    window: int | None
    results: list[RequestResult]
    seconds: float
    stage_order: list[str]
    unpriced: list[str] = field(default_factory=list)  # the trace's models neither the table nor the profile prices

    def totals(self) -> dict[str, Any]:
        o, u = _sum_bills(r.original for r in self.results), _sum_bills(r.ours for r in self.results)
        act = [(r.actual, r.original) for r in self.results if r.actual is not None]
        actual, sim = _sum_bills(a for a, _ in act), _sum_bills(orig for _, orig in act)
        return {
            "requests": len(self.results),
            "rewritten": sum(1 for r in self.results if r.outcome == "rewritten"),
            "validator_rejected": sum(1 for r in self.results if r.rejected),
            "sent_invalid": sum(1 for r in self.results if r.problems),
            "stage_failures": sum(1 for r in self.results if r.stages),
            "blocked": sum(1 for r in self.results if r.outcome.startswith("blocked")),
            "tokens_original": sum(r.tokens_original for r in self.results),
            "tokens_sent": sum(r.tokens_sent for r in self.results),
            "max_tokens_original": max((r.tokens_original for r in self.results), default=0),
            "max_tokens_sent": max((r.tokens_sent for r in self.results), default=0),
            "mean_tokens_original": _mean([r.tokens_original for r in self.results]),
            "mean_tokens_sent": _mean([r.tokens_sent for r in self.results]),
            "memory_injections": sum(1 for r in self.results if r.memory_items),
            "memory_tokens": sum(r.memory_tokens for r in self.results),
            "cost_original": o.cost, "cost_ours": u.cost,
            "bill_original": o.to_dict(), "bill_ours": u.to_dict(),
            "saving": (1 - u.cost / o.cost) if o.cost else 0.0,
            "actual_billed": actual.cost if act else None, "simulated_same_requests": sim.cost if act else None,
            "stage_events": dict(sum((Counter(r.stage_events) for r in self.results), Counter())),
            "errors": dict(Counter(e.split(":", 1)[0] for r in self.results for e in r.errors)),
            "fidelity": (fid := fidelity_totals(r.fidelity for r in self.results if r.fidelity)),
            "cost_ours_plus_penalty": u.cost + fid["penalty"],
        }

    def to_dict(self) -> dict[str, Any]:
        t = self.trace
        return {"trace": t.path, "source": t.source, "profile": self.profile, "window": self.window,
                "lines": t.lines, "skipped_lines": t.skipped_lines, "repairs": _repairs(t), "fit": t.fit,
                "notes": t.notes, "stages": self.stage_order, "seconds": round(self.seconds, 2), "unpriced": self.unpriced,
                "totals": self.totals(), "requests": [r.to_dict() for r in self.results]}


def _sum_bills(bills: Iterable[Bill]) -> Bill:
    out = Bill()
    for b in bills:
        out.add(b)
    return out


def _mean(xs: list[int]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _repairs(t: Trace) -> dict[str, int]:
    return {k: len(v) if isinstance(v, set) else v for k, v in t.repairs.items()}


def _counts_of(msgs: Any) -> int:
    return len(msgs) if isinstance(msgs, list) else 1


async def _replay(rt, trace: Trace, progress: Callable[[int, int], None] | None, turn_hooks: bool,
                  factor: float, targets: list[int] | None = None) -> list[RequestResult]:
    flow_events: dict[str, Counter] = {}
    flow_errors: dict[str, list[str]] = {}

    def on_event(ev) -> None:
        if ev.flow_id and ev.flow_id.startswith("replay-") and ev.type not in ("request", "forward", "stage"):
            flow_events.setdefault(ev.flow_id, Counter())[ev.type] += 1
            if ev.type == "error":
                d = ev.data
                where = d.get("where", "?") + (f"/{d['stage']}" if d.get("stage") else "")
                flow_errors.setdefault(ev.flow_id, []).append(f"{where}: {str(d.get('message', ''))[:120]}")

    unsubscribe = rt.bus.subscribe(on_event)
    prices = rt.settings.prices
    cache_o, cache_u = PromptCache(prices=prices), PromptCache(prices=prices)
    fidelity = FidelityCounter(rt.tokens.count_text, prices)
    learning = rt.settings.clearing.policy == "learn"
    taught: set[str] = set()  # cleared results whose loss the policy learned from (once each)
    out: list[RequestResult] = []
    try:
        for i, req in enumerate(trace.requests):
            flow_id = f"replay-{i:05d}"
            raw = orjson.dumps(req.body)
            notes = {"ts": req.ts, "index": i}
            if targets is not None and i < len(targets):  # tokens another run sent (the truncation baseline)
                notes["target_tokens"] = targets[i]
            ctx, outcome = await lifecycle.run(rt, lifecycle.Incoming(req.api, "api.anthropic.com", req.path, list(req.headers),
                                                                      raw, flow_id, mode="replay", notes={"replay": notes}))
            if ctx is None or outcome is None:
                raise lifecycle.Skip(f"request {i} not read (see its error event)")
            model = ctx.model
            price = price_for(model, prices)
            sent = lifecycle.sent(ctx, outcome)
            changed = sent is not None and sent is not ctx.original
            problems = validate_rewrite(req.api, sent, ctx.original) if changed else []
            if dialect(req.api).cache_breakpoints:
                bill_o = cache_o.bill(boundaries(ctx.original, rt.tokens, model, factor), req.ts, model, req.output_tokens)
                bill_u = cache_u.bill(boundaries(sent, rt.tokens, model, factor), req.ts, model, req.output_tokens) if sent is not None else Bill()
            else:  # no cache breakpoints: everything is base input
                bill_o = _flat_bill(rt.tokens.count_request(req.api, ctx.original, model), req.output_tokens, price, factor)
                bill_u = _flat_bill(rt.tokens.count_request(req.api, sent, model), req.output_tokens, price, factor) if sent is not None else Bill()
            if changed and ctx.tokens_out is not None:
                tokens_sent = ctx.tokens_out  # (the provider's view of what went, as the pipeline counted it)
            else:
                tokens_sent = rt.tokens.count_request(req.api, sent, model) if sent is not None else 0
                if sent is not None and ctx.tokens_in is not None:  # the provider's view, as tokens_in (pipeline._provider_dropped)
                    tokens_sent -= rt.tokens.count_request(req.api, ctx.original, model) - ctx.tokens_in
            key = dialect(req.api).history_key
            mem = ctx.notes.get("memory") if changed else None
            mem = mem if isinstance(mem, dict) and mem.get("injected") else {}
            res = RequestResult(
                index=i, ts=req.ts, kind=req.kind, outcome=outcome.reason,
                messages_original=_counts_of(ctx.original.get(key)), messages_sent=_counts_of(sent.get(key)) if sent else 0,
                tokens_original=ctx.tokens_in or 0, tokens_sent=tokens_sent, original=bill_o, ours=bill_u, problems=problems,
                stages={s["stage"]: s["status"] for s in ctx.stage_results if s["status"] != "ok"},
                stage_events=dict(flow_events.pop(flow_id, Counter())), errors=flow_errors.pop(flow_id, []),
                actual=billed_from_usage(req.usage, price) if req.usage and any(req.usage.get(k) for k in INPUT_USAGE) else None,
                memory_items=int(mem.get("injected") or 0), memory_tokens=int(mem.get("tokens") or 0),
                fidelity=fidelity.request(ctx.original, sent, req.response, model, tokens_sent, factor,
                                          recalled=ctx.notes.get("recalled") if sent is not ctx.original else None)
                if dialect(req.api) is ANTHROPIC else None,
            )
            out.append(res)
            if learning and res.fidelity is not None and res.fidelity.items:
                _learn_losses(rt, ctx, res.fidelity, taught)
            if turn_hooks and sent is not None:
                _turn_complete(rt, ctx, req, bill_u)
                _settle_memory(rt)
            if progress:
                progress(i + 1, len(trace.requests))
    finally:
        unsubscribe()
    return out


def _learn_losses(rt, ctx, fid: Fidelity, taught: set[str]) -> None:
    """The live signal a replay cannot see, from the fidelity measure: a cleared result the recorded
    answer used is one the model would have fetched again (the recorded answers were written against the
    client's history, so its own re-reads of what we cleared are there only by chance)."""
    lost = [it for it in fid.items if it["stage"] == "cleared" and it["tool_use_id"] not in taught]
    if not lost:
        return
    inputs = {b.get("id"): b.get("input") for m in ctx.original.get("messages") or [] if isinstance(m.get("content"), list)
              for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_use"}
    taught.update(it["tool_use_id"] for it in lost)
    policy.learn(state_cache(rt), ctx.tenant, {}, [(it["tool"], path_of(inputs.get(it["tool_use_id"]))) for it in lost],
                 policy.request_time(ctx))


def _flat_bill(tokens: int, output: int, p: Price, factor: float) -> Bill:
    t = int(round(tokens * factor))
    return Bill(tokens=t, uncached=t, output=output, input_cost=t * p.input / 1e6, output_cost=output * p.output / 1e6)


def _turn_complete(rt, ctx, req: ReplayRequest, bill: Bill) -> None:
    """The response's side of the lifecycle, with the usage our traffic would have been billed (no
    calibration on it, no ``turn`` event: see lifecycle.complete)."""
    usage = Usage(input_tokens=bill.uncached, output_tokens=req.output_tokens,
                  cache_read_input_tokens=bill.read, cache_creation_input_tokens=bill.write)
    turn = turn_of(ctx.api, ctx.model, req.response or {"role": "assistant", "content": []}, usage, events=0)
    complete(rt, ctx, turn, calibrate=False, announce=False)


SETTLE_S = 60.0  # how long a replay waits for memory to store a turn before the next request


def _settle_memory(rt) -> None:
    """Memory has stored (and embedded) the turn before the next request is searched, as on a machine
    that keeps up: otherwise which items the search finds moves with the load, and so do the blocks."""
    svc = memory_service.get_service(rt)
    if svc is not None and svc.ready.is_set() and svc.available:
        svc.flush(SETTLE_S)


def replay(trace_path: str | Path, profile: str | None = None, window: int | None = None,
           home: str | Path | None = None, stage_budget_ms: float | None = None, overrides: dict | None = None,
           progress: Callable[[int, int], None] | None = None, turn_hooks: bool = True, limit: int | None = None,
           compaction_calls: bool = True, plugins_dir: str | None = None,
           targets: list[int] | None = None, extra_plugins: list[tuple[str, object]] | None = None,
           before_close: Callable[[Any, ReplayReport], None] | None = None, api_key: str | None = None) -> ReplayReport:
    """Replay one trace through a fresh runtime (its own temporary cw_home unless ``home`` is given), with
    ``profile`` (a name or YAML path; None: the ``default`` profile, as ``contextwarden run`` uses).

    ``targets``: per request, a token count handed to the stages as ``ctx.notes["replay"]["target_tokens"]``
    (the truncation baseline cuts to what another run sent); ``extra_plugins``: stages registered for this
    replay only (the baselines'); ``before_close(runtime, report)``: called with the replay's runtime
    still open (its memory searched, its originals recalled: bench/recoverability.py); ``api_key``: the
    requests carry it, so traces replayed in one ``home`` are one user's sessions (one tenant: bench/policy_loto.py)."""
    profile = profile or "default"

    # offline, the tokenizer may take its time: under load its 15 s limit made some replays count with
    # the 4-characters estimate, whose thresholds fall elsewhere (figures that moved with the machine)
    # memory with its embedding model (../shared's, as the evaluations use it): without it memory searches
    # by words alone and its relevance floor never applies, which is not what runs live; a stage budget
    # given for a loaded machine is memory's search limit too (else its timeouts move with the load)
    # (embedded in the ingestion thread, not at idle priority: a replay waits for it, _settle_memory)
    base: dict[str, Any] = {"tokens": {"load_timeout_s": TOKENIZER_WAIT_S},
                            "memory": {**offline_assets(shared_dir()), "embed_idle": False}}
    if stage_budget_ms:
        base = _deep_merge(base, {"pipeline": {"stage_budget_ms": float(stage_budget_ms), "budgets_ms": {}},
                                  "memory": {"timeout_ms": float(stage_budget_ms)}})
    if window:
        base = _deep_merge(base, {"tokens": {"context_window": int(window)}})
    ov: dict[str, Any] = _deep_merge(base, dict(overrides or {}))
    tmp = None
    if home is None:
        tmp = tempfile.TemporaryDirectory(prefix="cw-replay-")
        home = tmp.name
    t0 = time.perf_counter()
    settings = load_settings(profile, Path(home), overrides=ov)
    rt = Runtime(settings, Path(home), plugins_dir, profile=profile, log=False, extra_plugins=extra_plugins)
    try:
        trace = load_trace(trace_path, rt.tokens, compaction_calls=compaction_calls) if Path(trace_path).suffix == ".jsonl" \
            else load_trace(trace_path, rt.tokens)
        if limit:
            trace.requests = trace.requests[:limit]
        if api_key:
            for rq in trace.requests:
                rq.headers = [*rq.headers, ("x-api-key", api_key)]
        factor = trace.fit["b"] if trace.fit else 1.0
        results = asyncio.run(_replay(rt, trace, progress, turn_hooks, factor, targets))
        models = {str(rq.body.get("model")) for rq in trace.requests if rq.body.get("model")}
        rep = ReplayReport(trace, settings.name, window, results, time.perf_counter() - t0, [n for n, _ in rt.stages()],
                           sorted(m for m in models if known_price(m, settings.prices) is None))
        if before_close is not None:
            before_close(rt, rep)
        return rep
    finally:
        rt.close()
        if tmp is not None:
            tmp.cleanup()


# ---------------------------------------------------------------------------- tables


def _k(n: float) -> str:
    return f"{n / 1000:,.1f}K" if abs(n) >= 1000 else f"{n:,.0f}"


def _pct(new: float, old: float) -> str:
    return f"{(new / old - 1) * 100:+.1f}%" if old else "n/a"


def summary_table(reports: list[ReplayReport], wide: bool = False) -> str:
    """One line per trace: tokens and simulated cost, original vs ours, within 100 columns; ``wide``: the
    requests' averages and maxima, failures, the penalty and the trace's own bill as well."""
    if not wide:
        rows: list[tuple[str, ...]] = [("trace", "reqs", "rewr", "tok orig", "tok ours", "Δ tok", "$ orig", "$ ours", "Δ $", "lost refs")]
        for rep in reports:
            t = rep.totals()
            rows.append((Path(rep.trace.path).stem.removeprefix("claude-code-")[:16], str(t["requests"]),
                         str(t["rewritten"]), _k(t["tokens_original"]), _k(t["tokens_sent"]),
                         _pct(t["tokens_sent"], t["tokens_original"]), f"{t['cost_original']:.2f}",
                         f"{t['cost_ours']:.2f}", _pct(t["cost_ours"], t["cost_original"]),
                         lost_cell(t["fidelity"], "refs")))
        return _render(rows)
    head = ("trace", "reqs", "rewritten", "invalid", "stage fail", "tokens orig", "tokens ours", "Δ tokens",
            "avg req orig", "avg req ours", "max req orig", "max req ours", "cost orig $", "cost ours $", "Δ cost",
            "ours+penalty $", "lost edit src", "lost refs", "actual $")
    rows = [head]
    for rep in reports:
        t = rep.totals()
        rows.append((Path(rep.trace.path).name[:40], str(t["requests"]), str(t["rewritten"]),
                     f"{t['validator_rejected']}/{t['sent_invalid']}", str(t["stage_failures"]),
                     _k(t["tokens_original"]), _k(t["tokens_sent"]), _pct(t["tokens_sent"], t["tokens_original"]),
                     _k(t["mean_tokens_original"]), _k(t["mean_tokens_sent"]),
                     _k(t["max_tokens_original"]), _k(t["max_tokens_sent"]),
                     f"{t['cost_original']:.2f}", f"{t['cost_ours']:.2f}", _pct(t["cost_ours"], t["cost_original"]),
                     f"{t['cost_ours_plus_penalty']:.2f}", lost_cell(t["fidelity"], "sources"), lost_cell(t["fidelity"], "refs"),
                     f"{t['actual_billed']:.2f}" if t["actual_billed"] is not None else "-"))
    return _render(rows)


def lost_cell(fid: dict, kind: str) -> str:
    """``lost/used (share)`` of ``kind`` (``sources``, ``refs``) in a fidelity total or a table row."""
    used, lost = fid[kind], fid[kind + "_lost"]
    return f"{lost}/{used} ({lost / used * 100:.1f}%)" if used else "0/0"


_APPLIED = {"clearing": "clear", "compression": "compress", "compaction": "compact", "recall": "recall", "breakpoints": "mark"}


def _applied(r) -> str:
    """The decisions that shaped what was sent (none when the client's request went as it came)."""
    if r.outcome == "unchanged" or r.tokens_sent == 0 or r.problems:
        return "-"
    names = [short for stage, short in _APPLIED.items() if r.stage_events.get(stage)]
    return "+".join(names + (["memory"] if r.memory_items else [])) or "-"


def request_table(rep: ReplayReport, wide: bool = False) -> str:
    """One line per request: within 100 columns, the decisions applied; ``wide``: the bill's parts, memory,
    losses and every stage event as well (whether applied or not)."""
    if not wide:
        rows: list[tuple[str, ...]] = [("#", "msgs", "tok orig", "tok ours", "$ orig", "$ ours", "outcome", "applied")]
        for r in rep.results:
            rows.append((str(r.index), f"{r.messages_original}->{r.messages_sent}", _k(r.tokens_original),
                         _k(r.tokens_sent), f"{r.original.cost:.3f}", f"{r.ours.cost:.3f}",
                         (r.outcome if not r.problems else "SENT INVALID")[:14], _applied(r)))
        return _render(rows)
    head = ("#", "t+s", "kind", "msgs", "tokens orig", "tokens ours", "memory", "read/write/new orig",
            "read/write/new ours", "$ orig", "$ ours", "lost src/ref", "outcome", "events")
    rows = [head]
    t0 = rep.results[0].ts if rep.results else 0
    for r in rep.results:
        rows.append((str(r.index), f"{r.ts - t0:.0f}", r.kind, f"{r.messages_original}->{r.messages_sent}",
                     _k(r.tokens_original), _k(r.tokens_sent),
                     f"{r.memory_items}/{_k(r.memory_tokens)}" if r.memory_items else "-",
                     f"{_k(r.original.read)}/{_k(r.original.write)}/{_k(r.original.uncached)}",
                     f"{_k(r.ours.read)}/{_k(r.ours.write)}/{_k(r.ours.uncached)}",
                     f"{r.original.cost:.3f}", f"{r.ours.cost:.3f}",
                     f"{r.fidelity.sources_lost}/{r.fidelity.refs_lost}" if r.fidelity and (r.fidelity.sources_lost or r.fidelity.refs_lost) else "-",
                     (r.outcome if not r.problems else "SENT INVALID: " + r.problems[0])[:40],
                     ",".join(f"{k}:{v}" for k, v in sorted(r.stage_events.items())) or "-"))
    return _render(rows)


def _render(rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        lines.append("  ".join(str(c).rjust(w) if j and i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def details(rep: ReplayReport) -> str:
    """What the summary line does not say: repairs, the size fit, the bill split, notes."""
    t, tr = rep.totals(), rep.trace
    bo, bu = t["bill_original"], t["bill_ours"]
    out = [f"{Path(tr.path).name}: {tr.lines} lines ({tr.skipped_lines} truncated, skipped), "
           f"{t['requests']} requests replayed in {rep.seconds:.1f} s, profile {rep.profile}"
           + (f", window {rep.window}" if rep.window else "") + f", stages: {', '.join(rep.stage_order) or 'none'}"]
    if tr.fit:
        out.append(f"  size fit: provider tokens = {tr.fit['a']:,.0f} + {tr.fit['b']:.3f} x estimate "
                   f"({tr.fit['points']} calls); stand-in system prompt {tr.fit['a'] / tr.fit['b']:,.0f} tokens")
    out += [f"  repaired: {k}: {v}" for k, v in sorted(_repairs(tr).items()) if v]
    out.append(f"  original: read {_k(bo['read'])}  write {_k(bo['write'])}  new {_k(bo['uncached'])}  out {_k(bo['output'])}  "
               f"= ${bo['cost']:.2f}")
    out.append(f"  ours:     read {_k(bu['read'])}  write {_k(bu['write'])}  new {_k(bu['uncached'])}  out {_k(bu['output'])}  "
               f"= ${bu['cost']:.2f}  ({t['saving'] * 100:.1f}% saved)")
    if rep.unpriced:
        out.append(f"  prices: {', '.join(rep.unpriced)} unpriced, billed at ${DEFAULT_PRICE.input:g} / "
                   f"${DEFAULT_PRICE.output:g} per million in / out (set the profile's prices)")
    if t["actual_billed"] is not None:
        out.append(f"  check: the trace's own usage bills ${t['actual_billed']:.2f} for the calls it records; "
                   f"the simulator bills ${t['simulated_same_requests']:.2f} for the same calls")
    if t["memory_injections"]:
        out.append(f"  memory: injected into {t['memory_injections']} requests, {_k(t['memory_tokens'])} tokens in all")
    if t["stage_events"]:
        out.append("  stage events: " + ", ".join(f"{k} {v}" for k, v in sorted(t["stage_events"].items())))
    if t["errors"]:
        first = next(e for r in rep.results for e in r.errors)
        out.append("  error events by origin: " + ", ".join(f"{k} {v}" for k, v in sorted(t["errors"].items()))
                   + f" (first: {first})")
    fid = t["fidelity"]
    out.append(f"  fidelity: lost edit sources {lost_cell(fid, 'sources')}, lost references {lost_cell(fid, 'refs')}"
               + (f"; lost content came from {', '.join(f'{k} {v}' for k, v in fid['by_tool'].items())}"
                  f" ({', '.join(f'{k} {v}' for k, v in fid['by_stage'].items())})" if fid["by_tool"] else "")
               + f"; penalty estimate {fid['round_trips']} round trips ${fid['penalty']:.2f}: ours + penalty "
               f"${t['cost_ours_plus_penalty']:.2f} ({_pct(t['cost_ours_plus_penalty'], t['cost_original'])}); "
               f"counted in {fid['ms'] / 1000:.1f} s")
    if fid.get("back_of"):
        out.append(f"  put back in the next request: {lost_cell({'n': fid['back_of'], 'n_lost': fid['back']}, 'n')} of the "
                   f"lost items by automatic recall, {lost_cell({'n': fid['back_of'], 'n_lost': fid['present']}, 'n')} "
                   f"held there in all (not counting the new tool results)")
    out += [f"  note: {n}" for n in tr.notes]
    return "\n".join(out)


def lost_examples(rep: ReplayReport) -> str:
    """Per request, what the answer used that ours had lost (examples)."""
    out = [f"{Path(rep.trace.path).name}: lost content by request (#, tool that held it, examples)"]
    for r in rep.results:
        f = r.fidelity
        if f and f.lost:
            out.append(f"  #{r.index} [{', '.join(f'{k} {v}' for k, v in f.by_tool.items())}] " + " | ".join(f.lost))
    return "\n".join(out)
