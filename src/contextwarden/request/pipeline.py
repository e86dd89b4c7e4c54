"""Runs the request stages: each in a worker thread under its own time budget, failing open.

The contract: the rewrite goes upstream when every stage finished in time, the result differs from the
original, the validator accepts it, and it is not above the window because of this request's new work.
Otherwise the request goes out as the session's *decided state*: the decisions already stored for it
(clearing's stubs, compaction's summary) re-applied byte for byte by each stage's ``cw_reapply`` on a
fresh typed request, and nothing new; if even that fails, the client's original bytes go. Every
decision is an event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain, compress, repeat
from operator import attrgetter, is_, not_
from typing import TYPE_CHECKING, Any

import orjson
from mitmproxy.net import encoding as enc
from pydantic import ValidationError

from ..models import ApiKind
from ..models.base import WireModel
from ..store.bodies import record
from ..util.redact import redact_headers, redact_path, tenant_of
from ..wire.dialects import NO_PROVIDER, dialect, validate_rewrite
from ..wire.history import Conversation, History, Typed
from ..wire.tokens import strips_thinking, turn_start_of
from ..wire.validate import FactCache
from .agents import derive_agent
from .context import BlockedResponse, Incoming, RequestContext
from .sessions import derive_session
from .stageclock import StageClock

if TYPE_CHECKING:
    from ..core.runtime import Runtime

# Who sent a request, as the proxy saw it (addons/routing.origin_of), among the consumed headers: a
# name no HTTP header can have, so no client sets it
ORIGIN = ":origin"
_AUTH_HEADERS = {"x-api-key", "authorization", "api-key", "anthropic-version", "anthropic-beta", "openai-organization", "openai-project"}


class Skip(Exception):
    """The body cannot be handled (not JSON, wrong type...): forward it unchanged and say why."""


@dataclass
class Outcome:
    body: bytes | None = None  # None: forward the original bytes
    blocked: BlockedResponse | None = None
    reason: str = "unchanged"
    # set when the request went out without its new work: "decided" (the session's decided state:
    # stored decisions re-applied) or "original" (the client's bytes: even re-applying failed), and why
    fallback: str | None = None
    fallback_reason: str | None = None


def decode_body(raw: bytes, encoding: str | None) -> bytes:
    if not encoding or encoding.strip().lower() in ("identity", ""):
        return raw
    try:
        out = enc.decode(raw, encoding.strip().lower())
        return out if isinstance(out, bytes) else out.encode()
    except ValueError as e:
        raise Skip(f"cannot decode {encoding} body: {e}") from None


def prepare(runtime: Runtime, req: Incoming) -> RequestContext:
    """Decode, parse and identify a request (runs in a worker thread). Raises Skip. A message of the
    Responses WebSocket says so in ``ctx.notes["transport"]``."""
    settings = runtime.settings
    runtime.last_request = time.monotonic()
    api, path, headers, raw = req.api, req.path, list(req.headers), req.raw
    h = {k.lower(): v for k, v in headers + list(req.consumed.items())}  # (looked up by lower-case names)
    ctype = (h.get("content-type") or "").lower()
    if not raw:
        raise Skip("empty body")
    if ctype and "json" not in ctype:
        raise Skip(f"content-type {ctype!r} is not JSON")
    if len(raw) > settings.proxy.max_body_mb * 1_000_000:
        raise Skip(f"body of {len(raw)} bytes is over proxy.max_body_mb")
    t0 = time.perf_counter()
    body = decode_body(raw, h.get("content-encoding"))
    history = dialect(api).history_key
    try:
        data, known = runtime.recent.parse(body, history)  # the history a recent request had is not decoded again
    except orjson.JSONDecodeError as e:
        raise Skip(f"malformed JSON: {e}") from None
    if not isinstance(data, dict):
        raise Skip("JSON body is not an object")
    session, source = derive_session(h, data)
    tenant = tenant_of(headers, path, session, runtime.salt)  # every credential; none: a tenant of its own
    if tenant.startswith("a-") and h.get(ORIGIN):  # no credential: the session within who the proxy saw send it
        tenant = tenant_of((), "", h[ORIGIN] + "\0" + str(session or ""), runtime.salt)
    agent = derive_agent(settings.budget.agent_rule, h, data, session)
    msgs = data.get(history)
    conv = runtime.conversations.get((api, tenant, session, agent)) if isinstance(msgs, list) else None
    try:
        raws, exact = conv.message_bytes(msgs, known.raws if known is not None else None) if conv is not None and \
            isinstance(msgs, list) else (None, False)
    except orjson.JSONEncodeError as e:  # parsed (depth < 1024) but deeper than orjson writes (254)
        raise Skip(f"nested too deep: {e}") from None
    runtime.recent.remember(body, data, raws, known, history)
    try:
        model, hist = _typed(api, data, raws, conv)
    except ValidationError:
        try:  # again as one body, for the error's full location (messages[i]...)
            dialect(api).parse(data)
        except ValidationError as e:
            raise Skip(f"body does not match the {api.value} schema: {e.errors()[0]['loc']} {e.errors()[0]['msg']}") from None
        raise
    ctx = RequestContext(
        runtime=runtime, settings=settings, flow_id=req.flow_id, api=api, host=req.host, path=redact_path(path),
        headers=redact_headers(headers), session=session, session_source=source, tenant=tenant,
        agent=agent, model=data.get("model") if isinstance(data.get("model"), str) else None,
        stream=bool(data.get("stream")), original=data, request=model,
        auth={k.lower(): v for k, v in headers if k.lower() in _AUTH_HEADERS}, request_bytes=body,
        # each message's own JSON, once: the content key of the per-message caches (typed messages, token
        # counts, validation facts); a bytes object keeps its hash, so every later lookup is a memcmp
        message_raw=raws, raw_exact=exact, known_messages=known.count if known is not None else 0, history=hist,
    )
    ctx.notes["transport"] = req.transport
    seen = hist.carried(_PROVIDER)  # (only the new messages are looked at)
    pc = ctx.notes["provider"] = dialect(api).provider_context(data, seen, frozenset(settings.pipeline.provider_take_over))
    # about every message but the last when the boundary is before it: a client that moves its cache
    # breakpoint to the newest message every turn rewrites the last one, and the next request then
    # looks at its new messages only, not the whole history again
    n = len(hist.entries)
    hist.carry_on(_PROVIDER, n - 1 if pc.boundary < n else n, pc.boundary)
    _hand_over(ctx)
    ctx.timings["parse"] = _ms(t0)
    return ctx


_OBJ = attrgetter("obj")  # (of each history entry, at C speed)
_PROVIDER = "provider"  # the conversation's slot: where the latest compaction block of the messages seen is
_HEAD = "tokens.head"  # the conversation's slot: the count of its latest body's tools and system (TokenCounter.count_request)


def _hand_over(ctx: RequestContext) -> None:
    """The client's delegated edits the profile takes over, out of the request (``ProviderContext.update``:
    a top-level field set, or removed when None); prepare's and the decided state's request alike."""
    update = ctx.notes.get("provider", NO_PROVIDER).update
    if update:
        req = ctx.request.model_copy()
        extra = dict(req.__pydantic_extra__ or {})
        for k, v in update:
            if v is None:
                extra.pop(k, None)
            else:
                extra[k] = v
        req.__pydantic_extra__ = extra
        ctx.request = req


def _typed(api: ApiKind, data: dict[str, Any], raws: list[bytes] | None, conv: Conversation | None,
           entries: list[Typed] | None = None) -> tuple[WireModel, History]:
    """The typed request and its History: its history entries (typed, or the client's dicts where the
    dialect has no message model) the conversation's own where it had them (``entries``: those of a
    request prepared before, for its decided state); a body without a history list has an empty one."""
    d = dialect(api)
    key, msgs = d.history_key, data.get(d.history_key)
    if raws is None or conv is None or not isinstance(msgs, list):
        return d.parse(data), History(api, None, [], [])
    if entries is None:
        entries = conv.typed(msgs, raws, d.typed_entry)
    model = d.parse({**data, key: []})
    # the field is set (it was in the input): stored directly, as parsing it would have
    model.__dict__[key] = list(map(_OBJ, entries))
    return model, History(api, conv, raws, entries)


def count_tokens(ctx: RequestContext, wire: dict[str, Any], raws: list[bytes | None] | None = None) -> int | None:
    """Tokens of ``ctx.original`` (kept per message on ctx) or of a rewrite of it (messages equal to the
    original's reuse those counts; ``raws``: the rewrite's message bytes where known, see wire_of)."""
    try:
        tokens = ctx.runtime.tokens
        h = ctx.history
        if wire is ctx.original:
            # each message's count is remembered with its typed message (history.Typed.memo); the
            # count of tools and system with the conversation, for its next body's same objects
            got = h.carried(_HEAD)
            n, h.tokens_kept = _count_remembering(ctx, wire, h.entries, raw=ctx.message_raw, fixed=got and got[1])
            if h.tokens_kept is not None:
                h.carry_on(_HEAD, 0, h.tokens_kept[2])
            return n - _provider_dropped(ctx, h.tokens_kept[1] if h.tokens_kept is not None else None)
        srcs, kept = h.wire_entries, h.tokens_kept
        msgs = wire.get(dialect(ctx.api).history_key)
        if srcs is None or not isinstance(msgs, list) or len(srcs) != len(msgs):
            keep: list[Any] = []
            n = tokens.count_request(dialect(ctx.api), wire, ctx.model, reuse=kept, raw=raws, keep=keep)
            return n - _provider_dropped(ctx, keep[0][1] if keep else None)
        # messages with an entry (the original's unchanged ones, derived ones) have their count
        n, mine = _count_remembering(ctx, wire, srcs, reuse=kept, raw=raws)
        return n - _provider_dropped(ctx, mine[1] if mine is not None else None)
    except Exception as e:  # accounting must never cost a request
        ctx.emit("error", where="tokens", message=str(e))
        return None


def _provider_dropped(ctx: RequestContext, entries: list[Any] | None) -> int:
    """Tokens of the count that the provider does not read: the leading messages it drops (before its
    latest compaction block: not ours to save either), from the original's per-message counts (the
    validator keeps those messages as they came in any rewrite); less the earlier turns' thinking that a
    ``keep: "all"`` edit keeps, which the count leaves out for a model that drops it by default: the
    counted body's own (``entries``: its per-message counts; a rewrite may have folded turns)."""
    pc = ctx.notes.get("provider", NO_PROVIDER)
    strips = dialect(ctx.api).thinking_dropped and strips_thinking(ctx.model)
    off = 0
    kept = ctx.history.tokens_kept if pc.dropped else None
    if kept:
        orig = kept[1]
        cut = turn_start_of(orig) if strips else 0
        off = sum(t - (th if i < cut else 0) for i, (t, th, _) in enumerate(orig[:pc.dropped]))
    if pc.keeps_thinking and strips and entries:
        off -= sum(th for _, th, _ in entries[pc.dropped:turn_start_of(entries)])
    return int(off)


def _count_remembering(ctx: RequestContext, wire: dict[str, Any], entries: list[Typed | None], **kw: Any) -> tuple[int, Any]:
    """``count_request`` of ``wire``, taking each message's count from its entry's memo (``entries``,
    aligned with the messages; None where a message has none) and remembering there the counts it
    computed. Returns the count and what ``count_request`` kept."""
    tokens = ctx.runtime.tokens
    keep: list[Any] = []
    key = ("tokens", tokens.encoding_of(ctx.model))
    known = [None if e is None else e.memo.get(key) for e in entries]
    n = tokens.count_request(dialect(ctx.api), wire, ctx.model, keep=keep, known=known, **kw)
    if keep and len(keep[0][1]) == len(entries):
        got = keep[0][1]
        for i in compress(range(len(known)), map(is_, known, repeat(None))):
            e = entries[i]
            if e is not None:
                e.memo[key] = got[i]
    return n, (keep[0] if keep else None)


def wire_of(ctx: RequestContext) -> tuple[dict[str, Any], list[bytes | None] | None]:
    """``ctx.request.wire()``, and the JSON bytes of each of its messages where known: a message still the
    one the request was prepared with is the client's own dict, and an edited copy made by
    ``History.derive_all`` has its remembered wire form; neither is dumped again."""
    req, h = ctx.request, ctx.history
    key = dialect(h.api).history_key
    msgs = req.__dict__.get(key) if h is not None else None
    orig = ctx.original.get(key)
    if not isinstance(msgs, list) or not isinstance(orig, list) or len(orig) != len(h.entries):
        return req.wire(), None
    ents, lraws = h.entries, h.raws
    n, both = len(ents), min(len(ents), len(msgs))
    pad = [None] * (len(msgs) - both)
    # the messages still at their own place taken at C speed, only the others looked at
    out: list[Any] = orig[:both] + pad
    raws: list[bytes | None] = lraws[:both] + pad
    srcs: list[Typed | None] = ents[:both] + pad  # the entry each message is, for its remembered token count (count_tokens)
    for p in chain(compress(range(both), map(not_, map(is_, msgs, map(_OBJ, ents)))), range(both, len(msgs))):
        m = msgs[p]
        j = p if p < n and ents[p].obj is m else h.original_index(m)
        if j is not None:
            out[p], raws[p], srcs[p] = orig[j], lraws[j], ents[j]
            continue
        e = h.derived.get(id(m))
        if e is not None and e.obj is m:
            if e.wire is None:
                e.wire = m.wire()
                e.raw = orjson.dumps(e.wire)
            out[p], raws[p], srcs[p] = e.wire, e.raw, e
            continue
        out[p], raws[p], srcs[p] = m.wire() if isinstance(m, WireModel) else m, None, None
    h.wire_entries = srcs
    # top-level fields still holding the client's own objects (system, tools: the cached prefix) are
    # taken as they are, not dumped again
    o = ctx.original
    d = req.__dict__
    same = {k for k, v in d.items() if k != key and isinstance(v, (dict, list)) and o.get(k) is v}
    extra = req.__pydantic_extra__ or {}
    same |= {k for k, v in extra.items() if isinstance(v, (dict, list)) and o.get(k) is v}
    top = req.model_dump(mode="json", exclude_unset=True, by_alias=True, exclude={key} | same)
    wire: dict[str, Any] = {}
    fields_set = req.model_fields_set
    for k in type(req).model_fields:  # the order model_dump would give: fields as declared, then extras
        if k == key:
            wire[key] = out
        elif k in same and k in fields_set:
            wire[k] = d[k]
        elif k in top:
            wire[k] = top.pop(k)
    for k in extra:
        if k in same:
            wire[k] = extra[k]
        elif k in top:
            wire[k] = top.pop(k)
    wire.update(top)
    return wire, raws


def serialise(wire: dict[str, Any], raws: list[bytes | None] | None, key: str = "messages") -> bytes:
    """``orjson.dumps(wire)``, byte for byte; the history's (``key``) messages whose exact bytes are
    known (``raws``, see wire_of) are copied in rather than encoded again."""
    msgs = wire.get(key)
    if raws is None or not isinstance(msgs, list) or len(raws) != len(msgs):
        return orjson.dumps(wire)
    parts: list[bytes] = []
    for k, v in wire.items():
        parts.append((b"," if parts else b"{") + orjson.dumps(k) + b":" + (b"[" if k == key else orjson.dumps(v)))
        if k == key:
            seq: list[Any] = [b","] * (2 * len(raws) - 1)  # (the messages and commas between them: one copy)
            seq[::2] = [r if r is not None else orjson.dumps(m) for r, m in zip(raws, msgs)] if None in raws else raws
            parts += seq
            parts.append(b"]")
    parts.append(b"}")
    return b"".join(parts)


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


def request_event(ctx: RequestContext, nbytes: int, mode: str) -> None:
    msgs = ctx.original.get(dialect(ctx.api).history_key)
    ctx.emit("request", host=ctx.host, path=ctx.path, model=ctx.model, tenant=ctx.tenant, agent=ctx.agent,
             session_source=ctx.session_source, messages=len(msgs) if isinstance(msgs, list) else 1,
             stream=ctx.stream, bytes=nbytes, tokens_in=ctx.tokens_in, mode=mode, headers=ctx.headers,
             known_messages=ctx.known_messages, context_window=ctx.settings.tokens.context_window,
             transport=ctx.notes.get("transport", "http"))


_NOT_RUN = object()  # admit_and_process: the stages did not run (the request was not read, or is bypassed)


def remember(runtime: Runtime, ctx: RequestContext, rewritten: bytes | None, nbytes: int) -> None:
    """Keep a request's bodies for the inspector (as JSON bytes: nothing for the garbage collector to
    walk); write them to disk if the profile asks."""
    original = ctx.request_bytes if ctx.request_bytes is not None else orjson.dumps(ctx.original)
    entry = {"flow_id": ctx.flow_id, "session": ctx.session, "ts": time.time(), "api": ctx.api.value,
             "path": ctx.path, "model": ctx.model, "headers": ctx.headers, "original": original,
             "rewritten": rewritten}
    runtime.bodies.put(ctx.flow_id, entry, len(original) + (len(rewritten) if rewritten is not None else 0))
    if runtime.settings.log.record_bodies:
        runtime.turn_pool.submit(record, runtime.home, entry)


def _action(outcome: Outcome) -> str:
    """What went upstream after a failure, for its ``error`` event."""
    return "forwarded the session's decided state" if outcome.body is not None else "forwarded original"


class Pipeline:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def reappliers(self) -> list[tuple[str, Any]]:
        """(name, cw_reapply) of every enabled stage that has one, in the pipeline's order."""
        impls = {i.plugin_name: i.function for i in self.runtime.pm.hook.cw_reapply.get_hookimpls()}
        return [(n, impls[n]) for n, _ in self.runtime.stages() if n in impls]

    async def admit_and_process(self, admit: Callable[[], tuple[RequestContext | None, bool]]
                                ) -> tuple[RequestContext | None, Outcome | None]:
        """``admit()``, then the stages and :meth:`finish` of its context, on one stage thread: one trip
        from the event loop and back. The loop watches the running stage's budget; past it, the stage
        is abandoned (left running: the breaker notes it) and the session's decided state goes.
        ``admit`` returns ``(ctx, run)``: ctx None (not read) or ``run`` False (bypassed) runs no stage
        and gives no Outcome."""
        rt = self.runtime
        clock = StageClock()
        got = await clock.watch(rt.stage_pool.submit(self._admit_run, admit, clock))
        ctx = clock.ctx
        if got is _NOT_RUN:
            return ctx, None
        assert ctx is not None  # (the stages ran: admit gave one)
        if clock.t_done:  # the stage thread's end to the loop having its answer: the way back's wait
            ctx.timings["to_loop"] = _ms(clock.t_done)
        return ctx, await self._outcome(ctx, clock, got)

    def _admit_run(self, admit: Callable[[], tuple[RequestContext | None, bool]], clock: StageClock) -> Any:
        ctx, run = admit()
        clock.ctx = ctx  # (read by the loop once this call returned, or once it abandoned a stage)
        if ctx is None or not run:
            return _NOT_RUN
        got = self._run(ctx, clock)
        clock.t_done = time.perf_counter()
        return got

    async def _outcome(self, ctx: RequestContext, clock: StageClock, got: Any) -> Outcome:
        """The Outcome of the stage thread's answer ``got`` (see :meth:`_run`)."""
        rt = self.runtime
        if got is None:  # the watchdog abandoned a stage
            name, ms, budget = clock.abandoned, clock.abandoned_ms, clock.budget
            assert name is not None and budget is not None and clock.thread is not None  # (set when it abandoned)
            ctx.late_threads.add(clock.thread)
            rt.mark_overrun(name, clock.returned, ctx.flow_id, ctx.session)
            # a call past its budget took at least its budget: a busy machine raises the budgets
            rt.stage_times.record(name, budget.ms, ctx.settings.pipeline.budget_window)
            err = f"ran past its {budget.describe()}"
            res = {"stage": name, "ms": round(ms, 3), "status": "timeout"}
            ctx.stage_results.append(res)
            ctx.emit("stage", **res, error=err, budget_ms=round(budget.ms, 1))
            got = ("timeout", name, err, None)
        if isinstance(got, Outcome):
            return got
        status, name, err, tb = got
        ctx.timings["stages"] = _ms(clock.t_stages)
        why = f"stage {name} {status}: {err}"
        outcome = await self.fall_back(ctx, why)
        ctx.emit("error", where="stage", stage=name, message=err, action=_action(outcome),
                 traceback=tb if status == "error" else None)
        return outcome

    def _run(self, ctx: RequestContext, clock: StageClock) -> Any:
        """The stages one after another, then :meth:`finish` (on the stage thread). Returns the Outcome,
        or (status, stage, error, traceback) of a stage that failed; None once the loop abandoned a
        stage (nothing more is done for this request here)."""
        rt = self.runtime
        trace = getattr(rt.pm, "cw_trace", None)
        p = ctx.settings.pipeline
        t_stages = clock.t_stages = time.perf_counter()
        ctx.timings["to_stages"] = round((t_stages - ctx.started) * 1000, 3)  # prepare's start -> here: waits included
        stages = rt.stages()
        self._start(ctx, stages)
        reappliers = None
        for name, fn in stages:
            budget = rt.stage_times.budget(name, p)
            # The breaker: a stage whose previous call ran past its budget and has not returned is
            # skipped (its stored decisions re-applied in its place) until that call returns.
            late = rt.overrun_since(name)
            reapplied = False
            if late is not None:
                reason = f"its call of {(time.time() - late) * 1000:.0f} ms ago ran past its budget and is still running"
                if reappliers is None:
                    reappliers = dict(self.reappliers())
                reapply = reappliers.get(name)
                if reapply is None:
                    ctx.stage_results.append({"stage": name, "ms": 0.0, "status": "skipped"})
                    ctx.emit("stage", stage=name, ms=0.0, status="skipped", error=reason)
                    ctx.emit("error", where="stage", stage=name, message=f"stage {name} skipped: {reason}",
                             reason=reason, action="stage skipped, other stages ran")
                    continue
                ctx.emit("error", where="stage", stage=name, message=f"stage {name} skipped: {reason}", reason=reason,
                         action="stage skipped, its decisions re-applied, other stages ran")
                fn, reapplied = reapply, True
            if trace:
                trace(f"cw_{'reapply' if reapplied else 'request'} [{name}] flow={ctx.flow_id} session={ctx.session}\n")
            status, err, tb, failure = "ok", None, None, None
            t0 = clock.begin(name, budget)
            ctx.deadline, ctx.budget_ms = t0 + budget.seconds, budget.ms
            try:
                fn(ctx)
            except Exception as e:
                status, err, failure = "error", f"{type(e).__name__}: {e}", e
                tb = traceback.format_exc(limit=6)
            ms = (time.perf_counter() - t0) * 1000
            if not clock.end(failure):
                return None  # abandoned past its budget: the loop went on without this request's work
            if not reapplied and status != "error":
                rt.stage_times.record(name, ms, p.budget_window)
            res = {"stage": name, "ms": round(ms, 3), "status": "skipped" if reapplied and status == "ok" else status}
            if reapplied:
                res["reapplied"] = True
            ctx.stage_results.append(res)
            ctx.emit("stage", **res, error=err if status != "ok" else reason if reapplied else None,
                     budget_ms=round(budget.ms, 1))
            if status != "ok":
                return status, name, err, tb
            if ctx.blocked is not None:
                ctx.timings["stages"] = _ms(t_stages)
                return Outcome(blocked=ctx.blocked, reason=f"blocked by {name}")
        ctx.timings["stages"] = _ms(t_stages)
        return self.finish(ctx)

    def _start(self, ctx: RequestContext, stages: list[tuple[str, Any]]) -> None:
        """``cw_request_start`` of the enabled stages that have one: work that overlaps the stages."""
        impls = self.runtime.pm.hook.cw_request_start.get_hookimpls()
        if not impls:
            return
        enabled = {n for n, _ in stages}
        for impl in impls:
            if impl.plugin_name not in enabled:
                continue
            try:
                impl.function(ctx)
            except Exception as e:  # an extra: the stages run as they would without it
                ctx.emit("error", where="request_start", stage=impl.plugin_name, message=f"{type(e).__name__}: {e}",
                         action="stages ran without it")

    async def fall_back(self, ctx: RequestContext, why: str) -> Outcome:
        """The session's decided state (:meth:`decided`), built within ``pipeline.fallback_budget_ms``;
        past that, the original (with an event)."""
        loop = asyncio.get_running_loop()
        limit = ctx.settings.pipeline.fallback_budget_ms
        abandoned = threading.Event()
        call = self.runtime.stage_pool.submit(self.decided, ctx, why, abandoned)
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(call, loop=loop)), limit / 1000)
        except TimeoutError:
            abandoned.set()
            msg = f"building the decided state ran past its {limit:.0f} ms limit (pipeline.fallback_budget_ms)"
        except Exception as e:  # a bug of ours: fail open
            msg = f"building the decided state failed: {type(e).__name__}: {e}"
        ctx.emit("error", where="reapply", message=msg, action="forwarded original")
        return Outcome(reason=why, fallback="original", fallback_reason=f"{why}; {msg}")

    def decided(self, ctx: RequestContext, why: str, abandoned: threading.Event | None = None,
                hold: list[Any] | None = None) -> Outcome:
        """The request as the session's decided state: every stage's stored decisions re-applied
        (``cw_reapply``, in the pipeline's order) and nothing new, validated and serialised like any
        rewrite (worker thread). Built on a fresh typed request from ``ctx.original`` (a stage call
        abandoned past its budget may still be editing ``ctx.request``), with the frozen typed messages
        ``ctx`` was prepared with. ``hold``: a list that receives the re-apply's events instead of the
        bus (the caller releases them if it sends this state)."""
        t0 = time.perf_counter()
        step, stage = "parsing a fresh typed request", None
        try:
            h = ctx.history
            model, hist = _typed(ctx.api, ctx.original, ctx.message_raw, h.conv if h is not None else None,
                                 h.entries if h is not None else None)
            fctx = dataclasses.replace(ctx, request=model, history=hist, notes={"provider": ctx.notes.get("provider", NO_PROVIDER)},
                                       stage_results=[], blocked=None, deadline=None, budget_ms=None, late_threads=set(),
                                       event_extra={**ctx.event_extra, "fallback": True}, held_events=hold)
            _hand_over(fctx)
            for stage, fn in self.reappliers():
                step = f"re-applying {stage}"
                fn(fctx)
        except Exception as e:
            msg = f"{step} failed: {type(e).__name__}: {e}"
            ctx.emit("error", where="reapply", stage=stage, message=msg, action="forwarded original",
                     traceback=traceback.format_exc(limit=6))
            return Outcome(reason=why, fallback="original", fallback_reason=f"{why}; {msg}")
        out = self.finish(fctx, fallback=True, abandoned=abandoned)
        ctx.tokens_out = fctx.tokens_out
        ctx.timings["fallback"] = _ms(t0)
        if out.body is None and out.reason != "unchanged":  # the decided state itself was invalid
            return Outcome(reason=why, fallback="original", fallback_reason=f"{why}; decided state: {out.reason}")
        return Outcome(body=out.body, reason=why, fallback="decided", fallback_reason=why)

    def finish(self, ctx: RequestContext, fallback: bool = False, abandoned: threading.Event | None = None) -> Outcome:
        """Compare, validate and serialise the result (worker thread). When nothing changed, the client's
        own bytes go. An invalid rewrite, or one above the window that the decided state is not, falls
        back to the decided state (unless this is the decided state: ``fallback``)."""
        t = ctx.timings
        t0 = time.perf_counter()
        wire, raws = wire_of(ctx)
        same = wire == ctx.original
        t["dump"] = _ms(t0)
        if same:
            ctx.tokens_out = ctx.tokens_in
            if abandoned is None or not abandoned.is_set():
                remember(self.runtime, ctx, None, len(ctx.request_bytes or b""))
            return Outcome(reason="unchanged")
        t0 = time.perf_counter()
        h = ctx.history
        problems = validate_rewrite(ctx.api, wire, ctx.original, original_raw=ctx.message_raw, raw=raws,
                                    fixed=ctx.notes.get("provider", NO_PROVIDER).boundary,
                                    facts=self.runtime.memo("validate.facts", FactCache),
                                    checkpoints=h.conv.checkpoints if h.conv is not None else None)
        t["validate"] = _ms(t0)
        if problems:
            why = f"invalid rewrite: {problems[0]}"
            out = Outcome(reason=why) if fallback else self.decided(ctx, why)
            ctx.emit("error", where="validator", message="; ".join(problems[:5]), problems=problems[:20],
                     action=_action(out))
            return out
        t0 = time.perf_counter()
        ctx.tokens_out = count_tokens(ctx, wire, raws)
        t["count_out"] = _ms(t0)
        window = ctx.settings.tokens.context_window
        if not fallback and ctx.tokens_out is not None and ctx.tokens_out > window:
            # above the window: never because of this request's new work (injected memory...)
            mine = ctx.tokens_out
            held: list[Any] = []
            out = self.decided(ctx, f"the rewrite ({mine:,} tokens) is above the window ({window:,})", hold=held)
            if out.fallback == "decided" and ctx.tokens_out is not None and ctx.tokens_out < mine:
                for type_, data in held:
                    self.runtime.bus.emit(type_, data, flow_id=ctx.flow_id, session=ctx.session)
                return out
            ctx.tokens_out = mine  # the decided state is no smaller: this request's new work is not the cause
        t0 = time.perf_counter()
        body = serialise(wire, raws if ctx.raw_exact else None, dialect(ctx.api).history_key)
        t["serialise"] = _ms(t0)
        if abandoned is None or not abandoned.is_set():
            remember(self.runtime, ctx, body, len(body))
        return Outcome(body=body, reason="rewritten")


def decided_state(runtime: Runtime, ctx: RequestContext) -> tuple[bytes | None, int | None]:
    """(the body as the session's decided state, its tokens) of ``ctx``'s request, without changing any
    state: no decision (re-apply decides nothing), no body for the inspector (the call counts as
    abandoned), no event (they are held and dropped). The body is None when it is the client's own."""
    fctx = dataclasses.replace(ctx, notes={}, stage_results=[], tokens_out=None, event_extra={**ctx.event_extra, "dry": True})
    quiet = threading.Event()
    quiet.set()  # finish() keeps no body of an abandoned call: a dry run is not a request
    out = Pipeline(runtime).decided(fctx, "dry run", abandoned=quiet, hold=[])
    return (out.body, fctx.tokens_out) if out.body is not None else (None, ctx.tokens_in)
