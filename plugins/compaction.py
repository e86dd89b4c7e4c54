"""Built-in stage ``compaction``: past the thresholds, the oldest messages become ONE user summary message
(:mod:`contextwarden.compress.summarise`), decided once per span and re-sent byte for byte
(docs/compression.md, "Compaction": where it cuts, when it pays, cache breakpoints, what it hands on
in ``ctx.notes``)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from contextwarden import hookimpl
from contextwarden.compress.policy import NS_SEEN, free_from, request_time
from contextwarden.compress.summarise import Summary, carry_context, extractive_summary, llm_summary
from contextwarden.memory.ids import memory_id
from contextwarden.memory.wayback import recall_wording
from contextwarden.models.base import ApiKind
from contextwarden.sessionctl import ledger as session_ledger
from contextwarden.sessionctl.pins import first_pinned_index
from contextwarden.store.statecache import state_cache
from contextwarden.wire.conversation import (
    SpanHasher,
    breakpoint_ttls,
    count_breakpoints,
    cut_points,
    digest_memo,
)
from contextwarden.wire.cost import READ_MULT, TTL_5M, WRITE_MULT, cache_factors, known_price, usage_usd
from contextwarden.wire.dialects import NO_PROVIDER, ProviderContext, dialect
from contextwarden.wire.history import session_key
from contextwarden.wire.workingset import WORKING_HEAD, Call, mentions, path_of, said, working_set

NS = "compaction"  # decisions, by tenant|session|agent
NS_LLM = "compaction_llm"  # finished LLM summaries, by tenant|session|span hash
MAX_DECISIONS = 4


@dataclass(frozen=True)
class Decision:
    """One stored compaction of a session: messages ``lead..end`` (their hash ``hash``) replaced by
    ``summary``. Stored as a JSON object with these very keys (a record written by an earlier version
    loads: a missing key takes its default, an unknown one is ignored)."""

    lead: int
    end: int
    hash: str | None
    summary: str
    span_tokens: int  # the span's tokens as the client sent it (the earlier decisions' spans included)
    summary_tokens: int
    folds: tuple[tuple[str, int, int], ...] = ()  # (memory id, first, last): the folded messages kept whole
    sections: dict[str, list[Any]] = field(default_factory=dict)
    messages: int = 0
    source_tokens: int = 0
    summariser: str = "extractive"
    created: float = 0.0
    trigger: str | None = None

    @classmethod
    def load(cls, d: dict[str, Any]) -> Decision:
        known = {"hash": None, "summary": "", **{k: d[k] for k in cls.__dataclass_fields__ if k in d}}
        known["folds"] = tuple(tuple(x) for x in known.get("folds") or ())
        known["sections"] = known.get("sections") or {}
        for k in ("lead", "end", "span_tokens", "summary_tokens", "messages", "source_tokens"):
            known[k] = int(known.get(k) or 0)
        return cls(**known)

    def dump(self) -> dict[str, Any]:
        return {**asdict(self), "folds": [list(x) for x in self.folds]}



# ---------------------------------------------------------------------------------------------------
# the cost model


@dataclass
class CostEstimate:
    keep: float  # cost of the next n requests without compacting, in uncached-input-token units
    compact: float  # ... with compacting now
    n: int  # requests the model expects to read this prefix
    warm: bool  # the current prefix is assumed to be in the provider's cache

    @property
    def pays(self) -> bool:
        return self.compact < self.keep

    def fields(self) -> dict[str, Any]:
        """The ``compaction`` event's cost fields."""
        return {"keep_cost": round(self.keep), "compact_cost": round(self.compact), "expected_requests": self.n,
                "warm": self.warm}


def pays_off(t_now: int, t_after: int, fixed: int, n: int, warm: bool, read: float = READ_MULT,
             write: float = WRITE_MULT[TTL_5M]) -> CostEstimate:
    """Whether compacting now is cheaper than not, over the ``n`` requests that will read the prefix.

    Costs are in units of uncached input tokens. ``t_now`` is the request as it would be sent without
    a new compaction, ``t_after`` with it, ``fixed`` the part both share (system + tools, the cached
    head no compaction touches). With cache read factor ``r`` (Anthropic 0.1) and write factor ``w``
    (Anthropic 1.25)::

        keep    = first + (n - 1) * r * t_now
                  first = r * t_now                          if the prefix is warm in the cache
                        = r * fixed + w * (t_now - fixed)    if it is cold (past the TTL: re-written anyway)
        compact = r * fixed + w * (t_after - fixed) + (n - 1) * r * t_after

    Compact when ``compact < keep``. ``n`` counts this request and the ones expected to follow within
    the cache's lifetime: 1 + the session's current streak of requests that each came within the TTL
    (5 minutes) of the previous one (a streak of s suggests about s more), capped by
    ``compaction.expected_requests_max``. A long warm session therefore compacts at the soft threshold
    (the write premium of the smaller prefix is repaid by reading it n times at 0.1x instead of the
    larger one); a session that just started, or one near its end, waits for the hard threshold. A
    cold prefix always favours compacting, since it is written either way. Growth of the conversation
    adds the same tokens to both sides and is left out.
    """
    n = max(1, n)
    first_keep = read * t_now if warm else read * fixed + write * (t_now - fixed)
    keep = first_keep + (n - 1) * read * t_now
    compact = read * fixed + write * (t_after - fixed) + (n - 1) * read * t_after
    return CostEstimate(keep=keep, compact=compact, n=n, warm=warm)


def _rhythm(store, key: str, ttl: float, cap: int, now: float, persist: bool, model: str) -> tuple[int, bool]:
    """(expected requests reading a new prefix, whether the current prefix is warm: the previous request
    came within the TTL, to the same model); records this request. Kept in memory, and written to SQLite
    only near the thresholds, where it matters."""
    seen = store.get(NS_SEEN, key) or {}
    last = seen.get("last")
    recent = last is not None and 0 <= now - last <= ttl
    warm = recent and seen.get("model", model) == model  # (another model's cache holds nothing of it)
    streak = int(seen.get("streak", 0)) + 1 if recent else 0
    saved = float(seen.get("saved", 0.0))
    persist = persist and (not recent or now - saved > 30)  # at most one write every 30 s per session
    store.put(NS_SEEN, key, {"last": now, "streak": streak, "n": int(seen.get("n", 0)) + 1, "model": model,
                             "saved": now if persist else saved}, persist=persist)
    return 1 + min(cap, streak), warm


# ---------------------------------------------------------------------------------------------------
# the background LLM summariser

class Summariser:
    """The background LLM summaries of one runtime (:func:`summariser`): one worker (started on the first
    summary), one job per key at a time; shut down with that runtime only."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cw-summarise")
        self.pending: dict[str, Future] = {}
        self.lock = threading.Lock()

    def submit(self, job_key: str, fn) -> bool:
        """Run ``fn`` in the background once per key; False when one is already running."""
        with self.lock:
            f = self.pending.get(job_key)
            if f is not None and not f.done():
                return False
            self.pending = {k: v for k, v in self.pending.items() if not v.done()}
            self.pending[job_key] = self.pool.submit(fn)
            return True


def summariser(rt) -> Summariser:
    return rt.memo("compaction.summariser", Summariser)


def wait_for_summaries(rt, timeout: float = 30.0) -> None:
    """Block until ``rt``'s background summaries finish (tests, shutdown)."""
    s = summariser(rt)
    with s.lock:
        futures = list(s.pending.values())
    wait(futures, timeout)


def _llm_url(ctx, cfg) -> tuple[str, str]:
    """(endpoint URL, API of that endpoint) for the summary request: the client's own endpoint."""
    base = (cfg.llm_base_url or f"https://{ctx.host}").rstrip("/")
    path, api = ctx.path.split("?", 1)[0], ctx.api
    route = dialect(api).summary_route
    if route is not None:
        path, api = route(path)
    return base + path, api.value


def summariser_cost(usage: dict[str, Any] | None, model: str | None, prices: Mapping[str, Any]) -> dict[str, Any]:
    """Event fields for what an LLM summary cost: its tokens, and dollars at the model's list price
    (``summariser_usd`` is None for a model neither ``prices``, the settings', nor the table knows)."""
    u = usage or {}
    model = u.get("model") or model
    usd = usage_usd({"input_tokens": u.get("input_tokens", 0), "output_tokens": u.get("output_tokens", 0)},
                    known_price(model, prices))
    return {"summariser_model": model, "summariser_input_tokens": int(u.get("input_tokens") or 0),
            "summariser_output_tokens": int(u.get("output_tokens") or 0),
            "summariser_usd": round(usd, 8) if usd is not None else None}


def _start_llm(ctx, cfg, key: str, span: str, turns, prior: Summary | None, messages: int, tokens: int) -> bool:
    rt = ctx.runtime
    url, api = _llm_url(ctx, cfg)
    auth = dict(ctx.auth)  # never logged: only handed to the HTTP call
    model = cfg.llm_model or ctx.model or ""
    session, flow_id = ctx.session, ctx.flow_id
    job_key = f"{key}|{span}"

    def run() -> None:
        t0 = time.perf_counter()
        try:
            s = llm_summary(api, url, auth, model, turns, prior_text=prior.text if prior else None,
                            messages=messages + (prior.messages if prior else 0),
                            tokens=tokens + (prior.source_tokens if prior else 0),
                            max_tokens=cfg.llm_max_tokens, timeout=cfg.llm_timeout_s)
        except Exception as e:
            rt.bus.emit("error", {"where": "summariser", "message": f"{type(e).__name__}: {str(e)[:300]}",
                                  "action": "extractive summary used"}, flow_id=flow_id, session=session)
            state_cache(rt).put(NS_LLM, job_key, {"failed": True, "ts": time.time()})
            return
        state_cache(rt).put(NS_LLM, job_key, {"text": s.text, "messages": s.messages, "source_tokens": s.source_tokens,
                                        "usage": s.usage, "ts": time.time()})
        rt.bus.emit("summariser", {"status": "done", "model": model, "usage": s.usage, "span": span,
                                   "ms": round((time.perf_counter() - t0) * 1000, 1), **summariser_cost(s.usage, model, rt.settings.prices)},
                    flow_id=flow_id, session=session)

    started = summariser(rt).submit(job_key, run)
    if started:
        ctx.emit("summariser", status="started", model=model, span=span, messages=messages, tokens=tokens)
    return started


# ---------------------------------------------------------------------------------------------------
# the stage


def folded_text(turns, first: int) -> str:
    """The compacted messages whole, as one readable text (what ``recall`` of the summary's id returns):
    each message's number and role, its text, its tool calls with their inputs and its tool results."""
    out = []
    for k, t in enumerate(turns):
        lines = [f"[#{first + k} {t.role}]"]
        for p in t.parts:
            if p.kind in ("text", "thinking") and p.text:
                lines.append(p.text)
            elif p.kind == "tool_use":
                # multi-line string values (a Write's content, an Edit's strings) verbatim under the call,
                # not JSON-escaped: recalled, they read as the file did (the model copies from them)
                inp = p.tool_input
                long = {k: v for k, v in inp.items() if isinstance(v, str) and "\n" in v} if isinstance(inp, dict) else {}
                small = {k: v for k, v in inp.items() if k not in long} if long else inp
                lines.append(f"[tool call {p.tool or '?'} {p.tool_id or ''}] " + orjson.dumps(small, default=str).decode())
                lines.extend(f"[{k}]\n{v}" for k, v in long.items())
            elif p.kind == "tool_result":
                lines.append(f"[tool result {p.tool or '?'} {p.tool_id or ''}{' error' if p.is_error else ''}]\n{p.text}")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def folds_line(folds: tuple[tuple[str, int, int], ...], ctx) -> str:
    """The summary's last line: the ids its compacted messages are kept whole under."""
    how = recall_wording(ctx, state_cache(ctx.runtime), session_key(ctx))
    ids = ", ".join(f"{mid} (messages #{a}–#{b})" for mid, a, b in folds)
    back = f"call {how} with an id" if how else "run `contextwarden recall ID`"
    return f"\n\nThe compacted messages are kept whole under memory id {ids}: {back} to read them verbatim."


def working_appendix(ctx, budget: int, orig: list, lead: int, end: int) -> str:
    """The working set's results (:mod:`contextwarden.wire.workingset`, over the whole history, within
    ``budget`` tokens) that the span ``lead..end`` folds, verbatim, for the summary: the model copies
    its next Edit's ``old_string`` from the files it is working with. Empty when the budget is 0
    (``compaction.working_set_tokens``, at most a quarter of the target) or none is folded."""
    if budget <= 0:
        return ""

    api, n = ctx.api, len(orig)
    cfg = ctx.settings.compaction
    calls: list[Call] = []
    recent: list[tuple[int, str]] = []  # what the model wrote in the messages it keeps (files it works on now)
    for i, t in enumerate(dialect(api).transcript(orig[lead:n], dialect(api).tool_calls(orig[:n]))):
        if cfg.working_set_mentions and lead + i >= end and t.role == "assistant":
            recent.extend((len(calls), s) for s in said(t.parts))
        for p in t.parts:
            if p.kind == "tool_result" and p.text.strip():
                text = p.text
                if p.tool == "Write" and isinstance(p.tool_input, dict) and isinstance(p.tool_input.get("content"), str):
                    text = p.tool_input["content"]  # what the file is now (the result only says it was written)
                calls.append(Call(len(calls), p.tool or "", p.tool_input, lead + i, text))
    named = mentions((q for c in calls if c.key < end and (q := path_of(c.tool_input))), recent) if recent else None
    # (results the kept messages hold cost the summary nothing: the budget is for the folded ones)
    kept = [c for c in working_set(calls, budget, lambda c: ctx.runtime.tokens.count_text(c.text, ctx.model) if c.key < end else 0,
                                   edited_only=True, mentioned=named, written=cfg.working_set_written,
                                   latest_edits=cfg.working_set_latest_edits) if c.key < end]
    if not kept:
        return ""
    kept.sort(key=lambda c: c.order)
    return "\n\n" + WORKING_HEAD + "".join(f"\n\n[{c.tool} {path_of(c.tool_input)}]\n{c.text}" for c in kept)


def effective(cfg, level: str | None, window: int) -> tuple[int, int, int, int]:
    """(soft, hard, target) in tokens and protected turns under a budget level."""
    f = cfg.level_factors.get(level or "NORMAL", 1.0)
    protect = max(1, math.ceil(cfg.protect_recent_turns * f))
    return int(cfg.soft_threshold * f * window), int(cfg.hard_threshold * f * window), int(cfg.target * f * window), protect


def _protected_start(es: list[Any], protect_turns: int) -> int:
    """First index that must be kept: the ``protect_turns``-th last user turn but never the first turn
    (a conversation of fewer turns keeps all but its first: one long autonomous turn, or the client's own
    summary and the work after it, would otherwise wait for the hard threshold), and no later than the
    turn holding the latest assistant message (0: nothing may be compacted). Scans the entries from
    the end, so it costs what the recent turns cost, not the whole history."""
    starts: list[int] = []  # turn starts, latest first
    last_asst = None
    before_asst = None  # the latest turn start before the latest assistant message
    for i in range(len(es) - 1, -1, -1):
        e = es[i]
        if last_asst is None and e.side == "assistant":
            last_asst = i
        if e.turn_start:
            starts.append(i)
            if before_asst is None and last_asst is not None and i < last_asst:
                before_asst = i
        if len(starts) > protect_turns and before_asst is not None:
            break
    if len(starts) < 2:
        return 0
    p = starts[min(protect_turns, len(starts) - 1) - 1]
    if last_asst is not None:
        if before_asst is None:
            return 0
        p = min(p, before_asst)
    return p


def _current_request(api: ApiKind, es, orig: list[Any], start: int, end: int, prior: Summary | None) -> str | None:
    """The user's request of the turn a cut falls inside, quoted verbatim in the summary (None when
    the cut is before that turn, whose request then stays in the messages)."""
    last_asst = next((e.index for e in reversed(es) if e.side == "assistant"), -1)
    cur = next((e.index for e in reversed(es[:max(0, last_asst)]) if e.turn_start), -1)
    if cur >= end or cur < 0:
        return None
    if cur < start:  # compacted before: the earlier summary quotes it already
        return (prior.sections.get("current") or [None])[0] if prior else None
    return "\n".join(p.text for t in dialect(api).transcript([orig[cur]]) for p in t.parts if p.kind == "text" and p.text.strip()) or None


def _prior(active: Decision | None) -> Summary | None:
    if not active:
        return None
    return Summary(text=active.summary, sections=active.sections, messages=active.messages,
                   source_tokens=active.source_tokens, summariser=active.summariser)


def _summary_cache_control(ctx, cfg, kept: list[Any]) -> dict | None:
    if not dialect(ctx.api).cache_breakpoints or not cfg.summary_breakpoint:
        return None
    o = ctx.original
    others = count_breakpoints(o.get("system")) + count_breakpoints(o.get("tools")) + count_breakpoints(kept)
    if others >= 4:
        return None
    return {"type": "ephemeral", "ttl": "1h"} if "1h" in breakpoint_ttls(kept) else {"type": "ephemeral"}


@hookimpl
def cw_request(ctx) -> None:
    _compact(ctx, decide=True)


@hookimpl
def cw_reapply(ctx) -> None:
    """The session's stored summary, put in again exactly as :func:`cw_request` does when the client
    still sends the span it covers (steps 1 and 4), and no new compaction (steps 2 and 3 do not run,
    nor the request-rhythm bookkeeping): the pipeline's fall-back when a stage failed."""
    _compact(ctx, decide=False)


@dataclass
class _Compaction:
    """What the four steps of one request's compaction share, built by :func:`_frame`."""

    ctx: Any
    cfg: Any
    api: ApiKind
    req: Any
    current: list[Any]  # the request's history, typed, as the earlier stages left it
    orig: list[Any]  # the same as wire dicts
    level: str | None
    soft: int
    hard: int
    target: int
    protect: int
    ws_budget: int
    key: str
    now: float
    store: Any  # the runtime's StateCache
    by_index: dict[int, int]  # tokens clearing freed, by message index
    total: int  # what is sent after clearing
    rec: dict[str, Any]  # the session's stored record: decisions, plan
    decisions: list[Decision]
    ctl: Any  # the user's controls: rollback, pins, compact now
    pin_at: int  # nothing from the first pinned message on is folded (no pin: the length)
    lead: int  # leading messages kept as they are (system side; Codex: up to the client's own compaction)
    spans: SpanHasher
    last_asst: int
    n_expected: int  # the request rhythm
    warm: bool
    # step 1 (:func:`_find`): the stored decision that still applies, where a new span would start, and
    # the tokens sent with it applied
    active: Decision | None = None
    start: int = 0
    t_now: int = 0


@dataclass
class _Decision:
    """Step 2's answer: whether to compact further (``new``: the span's end and tokens), why, at what cost."""

    new: dict[str, Any] | None = None
    trigger: str | None = None
    cost: CostEstimate | None = None
    ready: Summary | None = None  # a finished LLM summary of the chosen span
    es: list | None = None  # the conversation walk (entries), when it was read
    tok: list | None = None  # per-message tokens, when counted


def _compact(ctx, decide: bool) -> None:
    """find (the session's decision that still applies) → decide (when ``decide``: compact further?) →
    summarise (a new decision, stored) → apply (the summary in place of the span it covers)."""
    provider = ctx.notes.get("provider", NO_PROVIDER)
    decide = decide and not provider.compaction_steps_back  # (the provider compacts: its earlier summary only)
    f = _frame(ctx, decide, provider)
    if f is None:
        return
    _find(f)
    d = _decide(f) if decide else _Decision()
    active, new, llm_usage = f.active, d.new, None
    if new is not None:
        active, new, llm_usage = _summarise(f, d)
    if decide and f.ctl.compact_now:
        session_ledger.consume_compact_now(ctx)
    if active is not None:  # (a decision this request did not make goes as a reuse)
        _apply(f, active, reused=new is None, trigger=d.trigger if new is not None else None, cost=d.cost, llm_usage=llm_usage)


def _frame(ctx, decide: bool, provider: ProviderContext) -> _Compaction | None:
    """The request as compaction reads it, or None when there is nothing to do (the common case costs
    nothing more)."""
    cfg = ctx.settings.compaction
    if not cfg.enabled:
        return None
    api = ctx.api
    req = ctx.request
    current = dialect(api).messages_of(req)
    if current is None or getattr(req, "previous_response_id", None):
        return None  # the server holds the history (Responses)
    orig = dialect(api).messages_of(ctx.original) or []
    if len(orig) != len(current):  # an earlier stage added or removed messages: read what it left
        orig = [m.wire() if hasattr(m, "wire") else m for m in current]
    n = len(orig)
    if n < 3:
        return None
    rt = ctx.runtime
    level = ctx.notes.get("level")
    soft, hard, target, protect = effective(cfg, level, ctx.settings.tokens.context_window)
    ws_budget = min(max(0, cfg.working_set_tokens), target // 4)  # (a small window keeps less)
    key = session_key(ctx)
    now = request_time(ctx)  # (a replay's: the trace's own, so its idle gaps count)
    store = state_cache(rt)

    cleared = ctx.notes.get("clearing") or {}
    by_index: dict[int, int] = cleared.get("by_index") or {}
    total_in = ctx.tokens_in if ctx.tokens_in is not None else rt.tokens.count_request(api, ctx.original, ctx.model)
    total = max(0, total_in - int(cleared.get("freed", 0)))  # what is sent after clearing

    rec = store.get(NS, key) or {}
    decisions = [Decision.load(d) for d in rec.get("decisions") or []]
    ctl = session_ledger.control(ctx, live=decide)  # the user's controls: rollback, pins, compact now
    n_expected, warm = 0, False
    if decide:
        n_expected, warm = _rhythm(store, key, cfg.cache_ttl_s, cfg.expected_requests_max, now, persist=total > soft // 2,
                                     model=ctx.model)
    # where a free moment's compaction may start: what clearing took only because the moment is free counts
    # (a small step there must not keep the big one from being taken while it costs nothing extra)
    gate = int(soft * min(1.0, cfg.cold_soft_factor)) - int(cleared.get("freed_free", 0))
    if not decisions and (not decide or (total <= gate and not ctl.compact_now)):
        return None  # the common case costs nothing more
    if warm and free_from(ctx, store, key, cfg.cache_ttl_s) == 0:
        warm = False  # a new turn dropping thinking past the cache's lookback: the prompt is written again anyway
    if decide and not warm:  # a free moment: the prompt is written again whatever is sent
        soft, protect = gate, min(protect, cfg.cold_protect_turns or protect)
    elif not decisions and total <= soft and not ctl.compact_now:
        return None
    pin_at = first_pinned_index(ctx, orig) if ctl.pins else None
    pin_at = n if pin_at is None else pin_at

    lead = 0
    while lead < n and dialect(api).entry(lead, orig[lead]).side == "system":
        lead += 1
    lead = max(lead, provider.boundary)  # the provider's compaction: kept, with all before it
    spans = SpanHasher(orig, rt.memo("conversation.digests", digest_memo))
    last_asst = next((i for i in range(n - 1, -1, -1) if dialect(api).entry(i, orig[i]).side == "assistant"), -1)
    return _Compaction(ctx=ctx, cfg=cfg, api=api, req=req, current=current, orig=orig, level=level, soft=soft,
                       hard=hard, target=target, protect=protect, ws_budget=ws_budget, key=key, now=now, store=store,
                       by_index=by_index, total=total, rec=rec, decisions=decisions, ctl=ctl, pin_at=pin_at, lead=lead,
                       spans=spans, last_asst=last_asst, n_expected=n_expected, warm=warm)


def _find(f: _Compaction) -> None:
    """Step 1: the session's earlier decision, if the client still sends the span it covers."""
    # not one rolled back or covering pinned content (a rewound conversation must still keep its latest
    # assistant message: _applies)
    active = next((d for d in f.decisions if d.end <= f.pin_at and not f.ctl.is_off(NS, d.hash) and _applies(f, d, f.lead)),
                  None)
    f.active = active
    f.start, f.t_now = (active.end, _tokens_with(f, active)) if active else (f.lead, f.total)


def _applies(f: _Compaction, d: Decision, after: int) -> bool:
    """Whether decision ``d`` covers what the client sends now (its span ends after ``after``)."""
    k = d.end
    return d.lead == f.lead and after < k <= f.last_asst \
        and dialect(f.api).entry(k, f.orig[k]).side == "assistant" and f.spans.at(k) == d.hash


def _tokens_with(f: _Compaction, d: Decision) -> int:
    """What is sent with ``d`` applied (the tokens clearing freed inside its span are gone with it)."""
    cleared_in_span = sum(v for i, v in f.by_index.items() if f.lead <= int(i) < d.end)
    return f.total - (d.span_tokens - cleared_in_span) + d.summary_tokens


def _decide(f: _Compaction) -> _Decision:
    """Step 2: does it need to compact (further)? The span to fold and why (a ``compaction`` event with
    ``applied: false`` when it does not)."""
    ctx, cfg, api, orig, ctl = f.ctx, f.cfg, f.api, f.orig, f.ctl
    active, start, t_now = f.active, f.start, f.t_now
    out = _Decision()
    if not ((t_now > f.soft or ctl.compact_now) and not ctl.holds(t_now, ctx.settings)):
        return out
    store, key, by_index, total = f.store, f.key, f.by_index, f.total
    es = out.es = dialect(api).entries(orig, ctx.history if orig is dialect(api).messages_of(ctx.original) else None)
    kept = ctx.history.tokens_kept  # the pipeline's per-message counts of the original
    tok = out.tok = [e[0] for e in kept[1]] if kept is not None and kept[0] is orig else \
        [ctx.runtime.tokens.count_message(api, m, ctx.model) for m in orig]
    tok_now = [max(0, t - by_index.get(i, 0)) for i, t in enumerate(tok)]
    fixed = max(0, total - sum(tok_now))  # system + tools: the head no compaction touches
    prev_summary = active.summary_tokens if active else 0
    # (the files a summary keeps verbatim count at most their budget: cut deeper for them, or the
    # request lands above the target and compacts again soon, re-writing the cache each time)
    est_summary = min(cfg.summary_max_tokens, 400 + prev_summary) + f.ws_budget
    limits = [_protected_start(es, f.protect)]
    if t_now > f.hard:
        # past hard, protection gives way step by step (one long autonomous turn can fill the window):
        # the latest turn only, then everything before the latest assistant message
        limits += [_protected_start(es, 1), f.last_asst]
    limits = [min(hi, f.pin_at) for hi in limits]
    min_span = 1 if ctl.compact_now else cfg.min_span_tokens  # compact now: any span is worth it
    chosen = None
    plan = f.rec.get("plan")
    for hi in limits:
        cuts = cut_points(es, start, hi) if hi > start else []
        if not cuts:
            continue
        if plan and plan.get("end") in cuts and f.spans.at(plan["end"]) == plan.get("hash"):
            chosen = plan["end"]  # the span an LLM summary was started for
            break
        acc, j = 0, start
        for k in cuts:  # the smallest cut that reaches the target, else the largest
            acc += sum(tok_now[j:k])
            j = chosen = k
            if t_now - prev_summary - acc + est_summary <= f.target and not ctl.compact_now:  # (compact now: all it may)
                break
        if sum(tok_now[start:chosen]) >= min_span:
            break
    reason = "nothing worth compacting outside the protected turns"
    trigger = cost = None
    if chosen is not None:
        span_toks = sum(tok_now[start:chosen])
        t_after = t_now - prev_summary - span_toks + est_summary
        if span_toks >= min_span and t_after < t_now:
            read, write = cache_factors(api, ctx.model, ctx.settings.prices)
            cost = pays_off(t_now, t_after, fixed, f.n_expected, f.warm, read, write)
            trigger = "manual" if ctl.compact_now else "hard" if t_now > f.hard else "soft" if cost.pays else None
            reason = "soft threshold: re-writing the cache does not pay yet"
            if cfg.summariser == "llm":
                span = f.spans.at(chosen)
                done = store.get(NS_LLM, f"{key}|{span}")
                if done and not done.get("failed"):
                    out.ready = Summary(text=done["text"], messages=done["messages"], source_tokens=done["source_tokens"],
                                        summariser="llm", usage=done.get("usage"))
                elif not done:
                    # started past soft, so the summary is ready when it is needed
                    _start_llm(ctx, cfg, key, span, dialect(api).transcript(orig[start:chosen], dialect(api).tool_calls(orig[:chosen])),
                               _prior(active), chosen - start, sum(tok[start:chosen]))
                    if plan != {"end": chosen, "hash": span}:
                        store.update(NS, key, lambda cur: {**(cur or {}), "plan": {"end": chosen, "hash": span}})
                    if trigger == "soft":
                        trigger, reason = None, "waiting for the llm summary"
            if trigger:
                out.new = {"end": chosen, "span_tokens": sum(tok[start:chosen])}
    out.trigger, out.cost = trigger, cost
    if trigger is None:
        _not_applied(f, reason, cost)
    return out


def _not_applied(f: _Compaction, reason: str, cost: CostEstimate | None = None) -> None:
    """The ``compaction`` event of a request that compacts nothing new, and why."""
    data = dict(applied=False, reason=reason, tokens_before=f.total, level=str(f.level or "NORMAL"))
    if cost is not None:
        data.update(cost.fields())
    f.ctx.emit("compaction", **data)


def _summarise(f: _Compaction, d: _Decision) -> tuple[Decision | None, dict[str, Any] | None, Any]:
    """Step 3: a new decision: summarise the span (extending the earlier summary) and store it
    (compare-and-set). Returns (the decision to apply, the new one or None when another request's won
    or the summary would not make the request smaller (then the earlier decision, if any), the LLM
    summary's usage)."""
    ctx, cfg, api, orig, lead = f.ctx, f.cfg, f.api, f.orig, f.lead
    active, start, new = f.active, f.start, d.new
    assert new is not None  # (called for a new span only)
    llm_usage = None
    end = new["end"]
    prior = _prior(active)
    turns = dialect(api).transcript(orig[start:end], dialect(api).tool_calls(orig[:end]))
    summary = d.ready
    if summary is not None:
        llm_usage = summary.usage
        summary = carry_context(summary, turns, prior)
    else:
        summary = extractive_summary(turns, messages=end - start, tokens=new["span_tokens"],
                                     max_chars=cfg.summary_max_tokens * 4, prior=prior,
                                     current_request=_current_request(api, d.es, orig, start, end, prior))
    # the folded messages are kept whole under one id the summary names (the recall stage stores
    # them before this request goes out): every compaction can be undone by recall
    folded = folded_text(turns, start)
    folds = (active.folds if active else ()) + ((memory_id(folded), start, end - 1),)
    head, _, rest = summary.text.partition("\n\n")  # after the header (the current request stays last)
    text = head + folds_line(folds, ctx) + working_appendix(ctx, f.ws_budget, orig, lead, end) + ("\n\n" + rest if rest else "")
    span_hash = f.spans.at(end)
    decision = Decision(lead=lead, end=end, hash=span_hash, summary=text, folds=folds, sections=summary.sections,
                        messages=summary.messages, source_tokens=summary.source_tokens,
                        span_tokens=new["span_tokens"] + (active.span_tokens if active else 0),
                        summary_tokens=ctx.runtime.tokens.count_text(text, ctx.model) + 8,
                        summariser=summary.summariser, created=f.now, trigger=d.trigger)
    if _tokens_with(f, decision) >= f.t_now:  # (a short span: the summary, with the files it keeps, is longer)
        _not_applied(f, "the summary is not smaller than the span it folds")
        return active, None, llm_usage
    ctx.notes.setdefault("folded", []).append({"memory_id": folds[-1][0], "text": folded, "first": start, "last": end - 1})
    known = {(x.end, x.hash) for x in f.decisions}
    won: list[Decision] = []

    def decide(cur):
        """Compare-and-set: a decision another request (another replica) stored since this one read
        the record, and that this request can apply, wins; both then send the same bytes."""
        latest = (cur or {}).get("decisions") or []
        for x in map(Decision.load, latest):
            if (x.end, x.hash) not in known and _applies(f, x, start):
                won[:] = [x]
                return cur
        won.clear()
        # (the decision this one extends stays: a rollback of this one applies it again)
        others = [x for x in latest if x.get("hash") != decision.hash]
        return {"decisions": [decision.dump()] + others[: MAX_DECISIONS - 1]}

    f.store.update(NS, f.key, decide)
    if won:
        return won[0], None, llm_usage
    compacted = [{"tool_use_id": p.tool_id, "memory_id": memory_id(p.text), "tool": p.tool, "input": p.tool_input,
                  "text": p.text} for t in turns for p in t.parts if p.kind == "tool_result" and p.text.strip()]
    if compacted:
        ctx.notes.setdefault("compacted", []).extend(compacted)
    session_ledger.record_decision(
        ctx, NS, trigger=d.trigger, tokens_before=f.t_now,
        tokens_after=_tokens_with(f, decision), span=(lead, end - 1), tool_ids=[c["tool_use_id"] for c in compacted],
        refs=[span_hash], summary_tokens=decision.summary_tokens)
    return decision, new, llm_usage


def _apply(f: _Compaction, active: Decision, reused: bool, trigger: str | None, cost: CostEstimate | None,
           llm_usage: Any) -> None:
    """Step 4: [lead messages] + [summary] + messages[end:], and the ``compaction`` event."""
    ctx, cfg, api, lead, total = f.ctx, f.cfg, f.api, f.lead, f.total
    end = active.end
    cc = _summary_cache_control(ctx, cfg, f.orig[end:])
    summary_msg = dialect(api).summary_message(active.summary, cc)
    setattr(f.req, dialect(api).history_key, [*f.current[:lead], summary_msg, *f.current[end:]])
    ctx.notes["compaction"] = {"lead": lead, "end": end, "reused": reused, "summary_tokens": active.summary_tokens,
                               "messages": end - lead}
    data: dict[str, Any] = dict(applied=True, messages=end - lead, tokens_before=total, tokens_after=_tokens_with(f, active),
                                summary_tokens=active.summary_tokens, reused=reused,
                                summariser=active.summariser, level=str(f.level or "NORMAL"),
                                trigger=trigger or "reuse", breakpoint=cc is not None)
    if cost is not None and not reused:
        data.update(cost.fields())
    if ctx.notes.get("folded") and not reused:
        data["folded"] = [x["memory_id"] for x in ctx.notes["folded"]]  # the ids the summary names
    if llm_usage:
        data["llm_usage"] = llm_usage
        data.update(summariser_cost(llm_usage, llm_usage.get("model"), ctx.settings.prices))
    ctx.emit("compaction", **data)


@hookimpl
def cw_shutdown(runtime) -> None:
    summariser(runtime).pool.shutdown(wait=False, cancel_futures=True)
