"""The hindsight ceiling: the cheapest sequence of rewrites that loses nothing used later.

A *unit* (a tool result, a tool call's large input values, an assistant text) is *dead* from the first
request at which the model has seen it and no later answer needs it (:func:`last_uses`). A rewrite
replaces every unit dead then; dead sets only grow, so the last rewrite point is the whole state of an
O(m^2) dynamic program per conversation (:func:`_plan_conversation`). The plan is then billed exactly
(:func:`bill_plan`). docs/REPLAY.md gives the recurrence, why it is optimal within its action space and
what lies outside it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from hashlib import blake2b
from itertools import accumulate
from pathlib import Path
from typing import Any

from contextwarden.compress.policy import INSTRUCTION_FILE
from contextwarden.plugins.breakpoints import TURNS
from contextwarden.plugins.clearing import INPUT_VALUE_CHARS, _value_text, input_stub, stub_text

from ..settings import _deep_merge, load_settings
from ..wire.conversation import result_text
from ..wire.cost import (
    LOOKBACK_BLOCKS,
    READ_MULT,
    TTL_5M,
    WRITE_MULT,
    Boundary,
    Price,
    PromptCache,
    _without_cc,
    boundaries,
    price_for,
)
from ..wire.dialects import ANTHROPIC
from ..wire.dialects.anthropic import with_turn_breakpoints
from ..wire.references import answer_items
from ..wire.references import strings as _strings
from ..wire.tokens import TokenCounter, current_turn_start, marks
from .assets import TOKENIZER_WAIT_S
from .fidelity import FidelityCounter, Incremental, Indexer
from .replay import ReplayReport, RequestResult, _pct, _render, load_trace, lost_cell

SCAN_BACK = 40  # earlier requests whose cached end is looked for at a rewrite


@dataclass(frozen=True, slots=True)
class PlacedUnit:
    """A unit in one request's body, as the plan sees it."""

    id: str
    block: int  # its boundary index (cost.boundaries)
    saving: int  # billed tokens the stub saves
    seen: bool  # the model has read it (it is before the model's last message)


@dataclass(slots=True)
class Request:
    """One request of the trace: its boundaries and units."""

    index: int
    ts: float
    model: str
    conv: bytes  # the key of the prefix through the first message: requests that share a cache
    bounds: list[Boundary]
    units: list[PlacedUnit]
    n_sys: int  # boundaries before the first message block
    price: Price

    @property
    def total(self) -> int:
        return self.bounds[-1].cum if self.bounds else 0


@dataclass
class Plan:
    """Per request, the units the oracle replaces; the rewrite points; the DP's own estimate."""

    cleared: list[frozenset[str]]
    rewrites: list[int]
    estimate: float  # the DP's input dollars (the exact bill is the report's)
    free: int = 0  # rewrites at a request that read nothing cached anyway (an expired or new prefix)


@dataclass
class OracleReport:
    report: Any  # replay.ReplayReport of the oracle's bodies (fidelity counted: must lose nothing)
    plan: Plan
    seconds: float
    dp_seconds: float
    free_moments: int  # requests whose prefix had expired or was new: a rewrite there costs nothing extra
    counter_source: str = ""  # how its tokens were counted (tokens.TokenCounter.source)
    instruction_reads: int = 0  # the trace's Reads of agents' instruction files (:func:`instruction_reads`)
    instructions_kept: OracleReport | None = None  # the ceiling with those Reads needed to the end (``run``)


# ---------------------------------------------------------------------------- what may go


SHORT_STUB = "[cleared]"  # the ceiling's stub: what a rewrite needs at least (the clearing stage's names a way back)
KINDS = ("result", "input", "text")  # what the oracle may replace (KINDS[:1]: tool results only)


@dataclass(frozen=True, slots=True)
class Unit:
    """A block of a body the oracle may replace by a stub: a tool result (id: its tool_use_id), a
    tool call's large input values (``in:`` + the call's id), an assistant text (``tx:`` + its hash)."""

    id: str
    kind: str
    message: int
    block: int  # index in the message's content
    texts: tuple[str, ...]  # what the stub takes out


def units(body: dict, kinds: tuple[str, ...] = KINDS) -> tuple[list[Unit], list[str], int]:
    """The body's units, the texts outside any unit (user texts, small input values: always kept),
    and the index of the model's last message (units from there on are never replaced: unseen
    results, the latest call's input; so are assistant messages of the current turn with thinking)."""
    msgs = body.get("messages") or []
    last = max((k for k, m in enumerate(msgs) if isinstance(m, dict) and m.get("role") == "assistant"), default=-1)
    turn = current_turn_start(msgs)
    out: list[Unit] = []
    other: list[str] = []
    for mi, m in enumerate(msgs):
        if not isinstance(m, dict):
            continue
        c = m.get("content")
        if isinstance(c, str):
            other.append(c)
            continue
        c = c if isinstance(c, list) else []
        asst = m.get("role") == "assistant"
        signed = asst and mi >= turn and any(isinstance(b, dict) and b.get("type") in ("thinking", "redacted_thinking") for b in c)
        for bi, b in enumerate(c):
            if not isinstance(b, dict):
                continue
            t = b.get("type")
            if t == "tool_result" and "result" in kinds:
                out.append(Unit(str(b.get("tool_use_id")), "result", mi, bi, (result_text(b.get("content")),)))
            elif t == "tool_use":
                inp: dict = b["input"] if isinstance(b.get("input"), dict) else {}
                big = [v for v in inp.values() if len(_value_text(v)) > INPUT_VALUE_CHARS]
                other.extend(x for v in inp.values() if len(_value_text(v)) <= INPUT_VALUE_CHARS for x in _strings(v))
                if big and "input" in kinds and not signed:
                    out.append(Unit("in:" + str(b.get("id")), "input", mi, bi, tuple(x for v in big for x in _strings(v))))
                else:
                    other.extend(x for v in big for x in _strings(v))
            elif t == "text" and isinstance(b.get("text"), str):
                if asst and "text" in kinds and not signed and len(b["text"]) > len(SHORT_STUB):
                    out.append(Unit("tx:" + blake2b(b["text"].encode("utf-8", "surrogatepass"), digest_size=8).hexdigest(),
                                    "text", mi, bi, (b["text"],)))
                else:
                    other.append(b["text"])
    return out, other, last


def last_uses(requests, kinds: tuple[str, ...] = KINDS) -> dict[str, int]:
    """unit id -> the last request whose answer needs that unit. An answer needs, for each of its
    references and each line of its edit sources (an end line not held whole: each pair of its
    words) that the client's body held, one text holding it: none when a text outside the units, or
    a unit never replaced (unseen, locked), holds it; else the latest replaceable unit holding it.
    Keeping every needed unit keeps what :mod:`contextwarden.offline.fidelity` checks."""
    ix = Indexer()
    others = Incremental(ix)
    out: dict[str, int] = {}
    for i, req in enumerate(requests):
        ans = answer_items(req.response)
        if not ans.sources and not ans.refs:
            continue
        us, other, last = units(req.body, kinds)
        res = [(u.message >= last, u.id, ix.text("\n".join(u.texts))) for u in us]
        oth = others.index(other)

        def need(has, i=i) -> None:
            latest = None
            for locked, uid, t in res:
                if has(t):
                    if locked:
                        return  # a unit never replaced holds it
                    latest = uid
            if latest is not None:
                out[latest] = max(out.get(latest, -1), i)

        for lines, _ in ans.sources:
            for k, ln in enumerate(lines):
                h = hash(ln)
                if h in oth.lines:
                    continue
                if (k == 0 or k == len(lines) - 1) and not any(h in t.lines for _, _, t in res):
                    words = ln.split()
                    keys = [f"{a} {b}" for a, b in zip(words, words[1:])] or words
                    for key in keys:
                        if key not in oth.tokens:
                            need(lambda t, key=key: key in t.tokens)
                    continue
                need(lambda t, h=h: h in t.lines)
        for ref in ans.refs:
            if ref not in oth.tokens:
                need(lambda t, ref=ref: ref in t.tokens)
    return out


# ---------------------------------------------------------------------------- bodies


class Stubs:
    """What replaces each unit (worked out once), and the billed tokens that saves."""

    def __init__(self, counter, factor: float, short: bool = True) -> None:
        self.counter, self.factor, self.short = counter, factor, short
        self._block: dict[str, dict] = {}
        self._saving: dict[tuple[str, str], int] = {}

    def block(self, u: Unit, b: dict, calls: dict[str, tuple[str, Any]], model: str) -> dict:
        """The stub of ``u``, whose block in the body at hand is ``b``: made once without a breakpoint, it takes
        ``b``'s (a client moves its breakpoint to the newest message: a block's marker is not its own)."""
        got = self._block.get(u.id)
        if got is None:
            b = _without_cc(b)
            count = lambda t: self.counter.count_text(t, model)  # noqa: E731
            if u.kind == "text":
                got = {**b, "text": SHORT_STUB}
            elif u.kind == "result":
                name, inp = calls.get(u.id, ("", None))
                got = {**b, "content": SHORT_STUB if self.short else stub_text(name, inp, u.texts[0], count(u.texts[0]), 0)}
            elif self.short:
                got = {**b, "input": {k: SHORT_STUB if len(_value_text(v)) > INPUT_VALUE_CHARS else v
                                      for k, v in b["input"].items()}}
            else:
                made = input_stub(b["input"], count)
                got = {**b, "input": made[0]} if made else b
            self._block[u.id] = got
        return got if "cache_control" not in b else {**got, "cache_control": b["cache_control"]}

    def saving(self, u: Unit, b: dict, calls, model: str) -> int:
        key = (u.id, model)
        got = self._saving.get(key)
        if got is None:
            diff = self.counter.count_block(ANTHROPIC, b, model) - \
                self.counter.count_block(ANTHROPIC, self.block(u, b, calls, model), model)
            got = self._saving[key] = int(round(diff * self.factor))
        return got


def _calls(body: dict) -> dict[str, tuple[str, Any]]:
    out = {}
    for m in body.get("messages") or []:
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, list):
            for b in c:
                if isinstance(b, dict) and b.get("type") == "tool_use":
                    out[str(b.get("id"))] = (str(b.get("name") or ""), b.get("input"))
    return out


def cleared_body(body: dict, cleared: frozenset[str], stubs: Stubs, model: str, kinds: tuple[str, ...] = KINDS) -> dict:
    """``body`` with the units in ``cleared`` replaced by their stubs (new dicts; the client's kept)."""
    if not cleared:
        return body
    calls = _calls(body)
    msgs = list(body.get("messages") or [])
    todo: dict[int, dict[int, Unit]] = {}
    for u in units(body, kinds)[0]:
        if u.id in cleared:
            todo.setdefault(u.message, {})[u.block] = u
    for mi, us in todo.items():
        m = msgs[mi]
        msgs[mi] = {**m, "content": [stubs.block(us[bi], b, calls, body.get("model") or model) if bi in us else b
                                     for bi, b in enumerate(m["content"])]}
    return {**body, "messages": msgs}


def sent_body(body: dict, cleared: frozenset[str], stubs: Stubs, model: str, kinds: tuple[str, ...] = KINDS,
              turns: int = TURNS) -> dict:
    """What the plan sends: :func:`cleared_body` with the breakpoints stage's marks on the last ``turns`` turn
    starts, as the proxy sends any request (plugins/breakpoints.py); ``body`` itself when that is all."""
    sent = cleared_body(body, cleared, stubs, model, kinds)
    if not turns or not marks(ANTHROPIC, body.get("model") or model, ANTHROPIC.provider_context(body)):
        return sent
    return with_turn_breakpoints(sent, turns)


def prepare(trace, counter, factor: float, stubs: Stubs, kinds: tuple[str, ...] = KINDS,
            prices: Mapping[str, Any] | None = None) -> list[Request]:
    """Each request's boundaries (as the replay bills them) and its units, placed at their boundary."""
    out = []
    for i, rq in enumerate(trace.requests):
        body, model = rq.body, rq.body.get("model") or ""
        bounds = boundaries(body, counter, model, factor)
        where = {bd.at: k for k, bd in enumerate(bounds) if bd.at is not None}
        n_sys = len(bounds) - len(where)
        msgs = body.get("messages") or []
        calls = _calls(body)
        us, _, last = units(body, kinds)
        placed = [PlacedUnit(u.id, where[(u.message, u.block)], sv, u.message < last) for u in us if (u.message, u.block) in where
                  and (sv := stubs.saving(u, msgs[u.message]["content"][u.block], calls, model)) > 0]  # (a stub no smaller: kept)
        conv = bounds[min(n_sys, len(bounds) - 1)].key if bounds else b""
        out.append(Request(i, rq.ts, model.lower(), conv, bounds, placed, n_sys, price_for(model, prices)))
    return out


# ---------------------------------------------------------------------------- the dynamic program


def _cost(p: Price, read: int, total: int) -> float:
    if total < p.min_cache:
        return (read * READ_MULT + (total - read)) * p.input / 1e6
    return (read * READ_MULT + (total - read) * WRITE_MULT[TTL_5M]) * p.input / 1e6


def _savings(reqs: list[Request], last_use: dict[str, int]) -> tuple[list[list[int]], list[list[float]]]:
    """``sav[t][r]``: tokens the stubs of dead(r) save in request t (r <= t); ``first_new[t][r]``: the
    first block of request t cleared at t but not at r."""
    dead_from: dict[str, int] = {}  # the first local request at which the unit is seen and no later answer needs it
    for t, q in enumerate(reqs):
        for rb in q.units:
            if rb.id not in dead_from and rb.seen and last_use.get(rb.id, -1) < q.index:
                dead_from[rb.id] = t
    sav: list[list[int]] = []
    first_new: list[list[float]] = []
    for t, q in enumerate(reqs):
        by = [0] * (t + 1)
        first = [float("inf")] * (t + 1)
        for rb in q.units:
            d = dead_from.get(rb.id)
            if d is None or d > t or not rb.seen:
                continue
            by[d] += rb.saving
            first[d] = min(first[d], rb.block)
        sav.append(list(accumulate(by)))
        # the least first[d] over d in (r, t]: running minima from the end, shifted by one
        first_new.append(list(accumulate(reversed(first[1:]), min, initial=float("inf")))[::-1])
    return sav, first_new


class _Reads:
    """What request t of a conversation reads from the cache when it is at dead(r)."""

    def __init__(self, reqs: list[Request], sav: list[list[int]]) -> None:
        self.reqs, self.sav = reqs, sav
        m = len(reqs)
        self.cp = [0] * m  # boundaries request t shares with request t-1 (keys equal)
        for t in range(1, m):
            a, b = reqs[t - 1].bounds, reqs[t].bounds
            n = min(len(a), len(b))
            if n and a[n - 1].key == b[n - 1].key:
                k = n  # (append-only: the common case, one comparison)
            else:
                k = 0
                while k < n and a[k].key == b[k].key:
                    k += 1
            self.cp[t] = k
        self.touched = [q.ts for q in reqs]  # when each request's end entry was last refreshed, in steady state
        for k in range(m - 1):
            if reqs[k + 1].model == reqs[k].model and reqs[k + 1].ts - reqs[k].ts <= TTL_5M and self.cp[k + 1] > len(reqs[k].bounds) - 1:
                self.touched[k] = reqs[k + 1].ts

    def __call__(self, t: int, r: int, limit: float) -> int:
        """Tokens request t reads: the longest end entry of a request k in [r, t-1] (its body at dead(r))
        before block ``limit``, alive, within the lookback; else the system prompt's entry."""
        reqs, cp = self.reqs, self.cp
        q = reqs[t]
        last = len(q.bounds) - 1
        common = float("inf")
        for k in range(t - 1, max(r, t - SCAN_BACK) - 1, -1):
            common = min(common, cp[k + 1])
            e = len(reqs[k].bounds) - 1
            if reqs[k].model != q.model or q.ts - self.touched[k] > TTL_5M:
                continue
            if e < common and e < limit and e >= last - LOOKBACK_BLOCKS:
                if e >= q.n_sys - 1 and reqs[k].total >= q.price.min_cache:
                    return reqs[k].total - self.sav[k][r]
        prev = reqs[t - 1] if t else None
        if prev is not None and prev.model == q.model and q.ts - prev.ts <= TTL_5M and cp[t] >= q.n_sys and q.n_sys:
            s = q.bounds[q.n_sys - 1].cum
            return s if s >= q.price.min_cache else 0
        return 0


def _plan_conversation(reqs: list[Request], last_use: dict[str, int]) -> tuple[list[int], float, int]:
    """The rewrite points (local indices) of one conversation's requests, the DP's input dollars, and
    how many rewrites fell on a free moment."""
    m = len(reqs)
    sav, first_new = _savings(reqs, last_use)
    read = _Reads(reqs, sav)
    inf = float("inf")
    best = [inf] * m
    back = [-1] * m
    best[0] = _cost(reqs[0].price, read(0, 0, inf), reqs[0].total - sav[0][0])
    run = [0.0] * m  # run[r]: the cost of requests r+1..t-1 kept at dead(r), accumulated as t moves on
    for t in range(1, m):
        q = reqs[t]
        b, arg = inf, -1
        for r in range(t):
            if best[r] == inf:
                continue
            c = best[r] + run[r] + _cost(q.price, read(t, r, first_new[t][r]), q.total - sav[t][t])
            if c < b:
                b, arg = c, r
        best[t], back[t] = b, arg
        for r in range(t):  # request t kept at dead(r), for the rewrites after it
            run[r] += _cost(q.price, read(t, r, inf), q.total - sav[t][r])
    end = min(range(m), key=lambda r: best[r] + run[r])
    points = []
    t = end
    while t >= 0:
        points.append(t)
        t = back[t]
    points.reverse()
    # a free rewrite reads as much as keeping the previous state would have (an expired or new prefix)
    free = sum(1 for t in points if t == 0 or read(t, back[t], inf) == read(t, back[t], first_new[t][back[t]]))
    return points, best[end] + run[end], free


def conversations(reqs: list[Request]) -> list[list[Request]]:
    """The requests grouped by the prefix they share (main chain, subagents, a restart after a client
    compaction), each in time order."""
    convs: dict[bytes, list[Request]] = {}
    for q in reqs:
        convs.setdefault(q.conv, []).append(q)
    return list(convs.values())


def dead_at(q: Request, last_use: dict[str, int]) -> frozenset[str]:
    """The units of request q the model has seen and no later answer needs."""
    return frozenset(rb.id for rb in q.units if rb.seen and last_use.get(rb.id, -1) < q.index)


def cleared_sets(rs: list[Request], points: list[int], last_use: dict[str, int]) -> list[frozenset[str]]:
    """Per request of one conversation, what a plan with rewrites at ``points`` (local indices, 0
    first) clears: dead(r) of the last rewrite r, as far as the request still holds it."""
    out = []
    dead: frozenset[str] = frozenset()
    todo = set(points)
    for t, q in enumerate(rs):
        if t in todo:
            dead = dead_at(q, last_use)
        out.append(dead & {rb.id for rb in q.units if rb.seen})
    return out


def plan(reqs: list[Request], last_use: dict[str, int]) -> Plan:
    cleared: list[frozenset[str]] = [frozenset()] * len(reqs)
    rewrites: list[int] = []
    estimate, free = 0.0, 0
    for rs in conversations(reqs):
        points, cost, f = _plan_conversation(rs, last_use)
        estimate += cost
        free += f
        rewrites += [rs[p].index for p in points]
        for q, cl in zip(rs, cleared_sets(rs, points, last_use)):
            cleared[q.index] = cl
    return Plan(cleared, sorted(rewrites), estimate, free)


def free_moments(reqs: list[Request]) -> int:
    """Requests whose cached prefix had expired (an idle gap over the cache's lifetime since the
    previous request of the same conversation, or a model switch): written again whatever is sent."""
    last: dict[bytes, Request] = {}
    n = 0
    for q in reqs:
        p = last.get(q.conv)
        if p is not None and (q.ts - p.ts > TTL_5M or q.model != p.model):
            n += 1
        last[q.conv] = q
    return n


# ---------------------------------------------------------------------------- the exact bill


def bill_plan(trace, reqs: list[Request], cleared: list[frozenset[str]], counter, factor: float, stubs: Stubs,
              kinds: tuple[str, ...] = KINDS, prices: Mapping[str, Any] | None = None, turns: int = TURNS,
              fidelity: bool = True) -> list[RequestResult]:
    """Bill every request with its cleared set exactly as a replay bills what it sends (with the breakpoints
    stage's marks on the last ``turns`` turn starts), and count the fidelity of what the plan sent (unless
    ``fidelity`` is False: the bill alone, to compare plans): a replay report."""
    cache_o, cache_u = PromptCache(prices=prices or {}), PromptCache(prices=prices or {})
    fid = FidelityCounter(counter.count_text, prices) if fidelity else None
    results = []
    for q, rq, cl in zip(reqs, trace.requests, cleared):
        model = rq.body.get("model") or ""
        sent = sent_body(rq.body, cl, stubs, model, kinds, turns)
        bo = cache_o.bill(q.bounds, rq.ts, model, rq.output_tokens)
        bu_bounds = boundaries(sent, counter, model, factor) if sent is not rq.body else q.bounds
        bu = cache_u.bill(bu_bounds, rq.ts, model, rq.output_tokens)
        tokens_sent = int(round(bu_bounds[-1].cum / factor)) if bu_bounds else 0
        results.append(RequestResult(
            index=q.index, ts=rq.ts, kind=rq.kind, outcome="rewritten" if sent is not rq.body else "unchanged",
            messages_original=len(rq.body.get("messages") or []), messages_sent=len(sent.get("messages") or []),
            tokens_original=int(round(q.total / factor)), tokens_sent=tokens_sent, original=bo, ours=bu,
            fidelity=fid.request(rq.body, sent, rq.response, model, tokens_sent, factor) if fid else None))
    return results


def counter_for(overrides: dict | None = None) -> TokenCounter:
    """The token counter a replay counts with (the default profile's, tiktoken waited for)."""
    ov = _deep_merge({"tokens": {"load_timeout_s": TOKENIZER_WAIT_S}}, dict(overrides or {}))
    return TokenCounter(load_settings("default", None, overrides=ov).tokens)


def solve(trace, counter, kinds: tuple[str, ...] = KINDS, short: bool = True,
          prices: Mapping[str, Any] | None = None, keep: Iterable[str] = ()) -> OracleReport:
    """Plan the rewrites of a loaded trace and bill the plan exactly. ``kinds``: what it may replace
    (tool results, large tool-input values, assistant texts); ``short``: the ceiling's short stub
    (else the clearing stage's own); ``prices``: the user's, before the table; ``keep``: unit ids
    needed to the end of the trace whatever the answers quote (instruction files: :func:`instruction_reads`)."""
    return solve_each(trace, counter, [keep], kinds, short, prices)[0]


def solve_each(trace, counter, keeps: list[Iterable[str]], kinds: tuple[str, ...] = KINDS, short: bool = True,
               prices: Mapping[str, Any] | None = None) -> list[OracleReport]:
    """:func:`solve` once per set of unit ids in ``keeps``, the trace prepared (its units, stubs, counts and
    last uses) once for all of them; each report's time counts the preparation and its own plan and bill."""
    t0 = time.perf_counter()
    factor = trace.fit["b"] if trace.fit else 1.0
    stubs = Stubs(counter, factor, short)
    reqs = prepare(trace, counter, factor, stubs, kinds, prices)
    uses = last_uses(trace.requests, kinds)
    free = free_moments(reqs)
    prepared = time.perf_counter() - t0
    out = []
    for keep in keeps:
        t1 = time.perf_counter()
        p = plan(reqs, uses | dict.fromkeys(keep, len(trace.requests)))
        dp = time.perf_counter() - t1
        results = bill_plan(trace, reqs, p.cleared, counter, factor, stubs, kinds, prices)
        secs = prepared + time.perf_counter() - t1
        out.append(OracleReport(ReplayReport(trace, "oracle", None, results, secs, ["oracle"]), p, secs, dp, free))
    return out


def instruction_reads(trace) -> frozenset[str]:
    """The ids of the trace's Reads of agents' instruction files (``CLAUDE.md``, ``AGENTS.md``, ``AI_*.md``:
    ``compress.policy.INSTRUCTION_FILE``). The model follows them without quoting them, so hindsight by quotes
    finds them unused: the ceiling with them needed to the end is the one at the fidelity the default keeps
    (docs/REPLAY.md, "Instruction files")."""
    return frozenset(uid for rq in trace.requests for uid, (name, inp) in _calls(rq.body).items()
                     if name == "Read" and isinstance(inp, dict) and INSTRUCTION_FILE.search(str(inp.get("file_path") or "")))


def run(trace_path: str | Path, overrides: dict | None = None, limit: int | None = None,
        prices: Mapping[str, Any] | None = None) -> OracleReport:
    """The oracle on one trace file, loaded as a replay loads it (its time includes the loading); when the
    trace reads instruction files, with the ceiling that keeps those Reads beside it."""
    t0 = time.perf_counter()
    counter = counter_for(overrides)
    trace = load_trace(trace_path, counter)
    if limit:
        trace.requests = trace.requests[:limit]
    kept = instruction_reads(trace)
    rep, *also = solve_each(trace, counter, [(), kept] if kept else [()], prices=prices)
    if also:
        rep.instruction_reads, rep.instructions_kept = len(kept), also[0]
    rep.seconds = rep.report.seconds = time.perf_counter() - t0
    rep.counter_source = counter.source
    return rep


# ---------------------------------------------------------------------------- the table

KEPT = "oracle (instruction files kept)"  # the row of ``OracleReport.instructions_kept``
SHORT = {"client as it is": "client", "claude-code (default)": "default", "claude-code-conservative": "conservative",
         "clear_tool_uses (100K, keep 3)": "clear_tool_uses", "clear_tool_uses (100K, keep 3, at least 50K)": "clear_tool_uses 50K",
         "observation masking (last 10)": "masking (last 10)", "last-N truncation (to our tokens)": "truncation",
         KEPT: "oracle, instr."}


def share(row: dict[str, Any], oracle_row: dict[str, Any]) -> float | None:
    """The share of the oracle's saving a row achieves, cost + penalty against the client's cost."""
    ceiling = row["cost_client"] - oracle_row["cost"]
    return (row["cost_client"] - row["cost_plus_penalty"]) / ceiling if ceiling > 0 else None


def table(rows: list[dict[str, Any]]) -> str:
    """Per trace: the client, our runs (the default, the learned policy: ``--set clearing.policy=learn``),
    the oracle and the baselines (rows of :func:`baselines.row`,
    one labelled ``oracle``, one :data:`KEPT` when the trace reads instruction files): cost, Δ cost and
    Δ cost + penalty against the client's, lost edit sources and references, and the share of each
    ceiling's saving (cost + penalty) each achieves."""
    head = ("trace", "run", "cost $", "Δ cost", "Δ +pen", "lost edit src", "lost refs", "of oracle", "of instr.")
    lines = [head]
    ceilings = {r["trace"]: r for r in rows if r["baseline"] == "oracle"}
    kept = {r["trace"]: r for r in rows if r["baseline"] == KEPT}
    for r in rows:
        o = ceilings.get(r["trace"])
        k = kept.get(r["trace"], o)
        sh = share(r, o) if o is not None else None
        shk = share(r, k) if k is not None and r["baseline"] != "oracle" else None
        lines.append((r["trace"].removeprefix("claude-code-")[:8], SHORT.get(r["baseline"], r["baseline"])[:22],
                      f"{r['cost']:.2f}", _pct(r["cost"], r["cost_client"]), _pct(r["cost_plus_penalty"], r["cost_client"]),
                      lost_cell(r, "sources"), lost_cell(r, "refs"), f"{sh * 100:.0f}%" if sh is not None else "-",
                      f"{shk * 100:.0f}%" if shk is not None else "-"))
    return _render(lines)
