"""One request's lifecycle, the same for every caller (the addons, replay, the evaluations, benchmarks
and tests):

    request   run:      admit (prepare → count → the ``request`` event) → the stages → validate →
                        serialise (pipeline.Pipeline; fails open), one trip to a stage thread
              observe:  admit for a request already on its way (forwarded at once)
    response  complete: the assembled turn → ``cw_turn_complete`` hooks → calibration → the ``turn`` event
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import orjson

from ..models.base import ApiKind
from ..wire.apis import COUNT
from ..wire.cost import known_price
from ..wire.dialects import dialect
from ..wire.streams.turn import AssembledTurn, Usage
from .context import Incoming, RequestContext
from .pipeline import Outcome, Pipeline, Skip, count_tokens, decided_state, prepare, remember, request_event

if TYPE_CHECKING:
    from ..core.runtime import Runtime

__all__ = ["Incoming", "Skip", "admit", "run", "observe", "send", "sent", "complete", "turn_of"]

log = logging.getLogger(__name__)


def admit(rt: Runtime, req: Incoming) -> RequestContext:
    """prepare → count → announce: the request's context with ``tokens_in`` (``timings["count_in"]``)
    and, when ``req.mode`` is given, its ``request`` event ("active": "bypass" for a session the TUI
    bypassed). Raises Skip (the body is not one we read). ``req.tenant``, ``req.notes``,
    ``req.settings`` are set on the context before counting. A failure after parsing (counting, the
    event) fails open: an ``error`` event, the request goes on."""
    ctx = prepare(rt, req)
    if req.tenant is not None:
        ctx.tenant = req.tenant
    if req.settings is not None:
        ctx.settings = req.settings
    if req.notes:
        ctx.notes.update(req.notes)  # type: ignore[typeddict-item]  # (keys declared in notes.Notes)
    try:
        if req.count:
            t0 = time.perf_counter()
            ctx.tokens_in = count_tokens(ctx, ctx.original)
            ctx.timings["count_in"] = round((time.perf_counter() - t0) * 1000, 3)
        if req.mode is not None:
            bypassed = req.mode == "active" and ctx.session in rt.bypass
            request_event(ctx, len(req.raw), "bypass" if bypassed else req.mode)
    except Exception as e:
        ctx.emit("error", where="request", message=f"{type(e).__name__}: {e}", action="request event incomplete")
    return ctx


def _admit_or_report(rt: Runtime, req: Incoming) -> RequestContext | None:
    """:func:`admit`; None when the request cannot be read (an ``error`` event says why: it goes unchanged)."""
    try:
        return admit(rt, req)
    except Skip as e:
        rt.bus.emit("error", {"where": "parse", "message": str(e), "action": "forwarded unchanged", "api": req.api.value,
                              "path": req.path, "bytes": len(req.raw)}, flow_id=req.flow_id)
    except Exception as e:  # fail open on our own bugs too
        log.exception("contextwarden: prepare failed")
        rt.bus.emit("error", {"where": "prepare", "message": f"{type(e).__name__}: {e}", "action": "forwarded unchanged"},
                    flow_id=req.flow_id)
    return None


async def run(rt: Runtime, req: Incoming) -> tuple[RequestContext | None, Outcome | None]:
    """One request's way in, for every caller: ``(ctx, outcome)``. ctx None: not read (an ``error`` event
    says why). Reading it and running its stages is ONE trip to a stage thread and back
    (``Pipeline.admit_and_process``). A session the TUI bypassed runs no stage (``Outcome`` "session
    bypassed"). A count_tokens request (``route`` COUNT) gets the session's decided state, nothing new
    decided. Outcome None: the pipeline failed (an ``error`` event; the original goes)."""
    if req.route == COUNT:
        return await asyncio.get_running_loop().run_in_executor(rt.core_pool, _count, rt, req)
    admitted: list[RequestContext] = []

    def admit_here() -> tuple[RequestContext | None, bool]:  # (on the stage thread)
        ctx = _admit_or_report(rt, req)
        if ctx is not None:
            admitted.append(ctx)
        return ctx, ctx is not None and ctx.session not in rt.bypass

    try:
        ctx, outcome = await Pipeline(rt).admit_and_process(admit_here)
    except Exception as e:
        log.exception("contextwarden: pipeline failed")
        if admitted:
            admitted[0].emit("error", where="pipeline", message=f"{type(e).__name__}: {e}", action="forwarded original")
        return (admitted[0] if admitted else None), None
    if ctx is not None and outcome is None:
        outcome = Outcome(reason="session bypassed")
    return ctx, outcome


def _count(rt: Runtime, req: Incoming) -> tuple[RequestContext | None, Outcome]:
    """count_tokens: the body as the session's decided state (``Outcome.body`` None: the client's own,
    unannounced; a session bypassed or without decisions, or a body we do not read)."""
    try:
        ctx = admit(rt, req)
    except Skip:  # not a body we read: it goes as it came, like any request we do not manage
        return None, Outcome()
    if ctx.session in rt.bypass:
        return ctx, Outcome(reason="session bypassed")
    body, tokens = decided_state(rt, ctx)
    if body is not None:
        ctx.emit("count_tokens", changed=True, tokens_in=ctx.tokens_in, tokens_out=tokens,
                 messages=len(dialect(ctx.api).messages_of(ctx.original) or []))
    return ctx, Outcome(body=body, reason="rewritten" if body is not None else "unchanged")


def observe(rt: Runtime, req: Incoming) -> RequestContext | None:
    """A request already on its way (observe-only, bypassed, or forwarded by the engine link), read on
    a worker thread: the ``request`` event (mode ``req.mode``), its body kept for the inspector, and
    its ``forward`` event. None when it cannot be read."""
    t0 = time.perf_counter()
    ctx = _admit_or_report(rt, req)
    if ctx is None:
        return None
    remember(rt, ctx, None, len(req.raw))
    ctx.emit("forward", changed=False, reason=req.mode, bytes_in=len(req.raw), bytes_out=len(req.raw),
             tokens_in=ctx.tokens_in, tokens_out=ctx.tokens_in, pipeline_ms=round((time.perf_counter() - t0) * 1000, 3))
    return ctx


def sent(ctx: RequestContext, outcome: Outcome) -> dict[str, Any] | None:
    """The body that went upstream: the rewrite, or the client's own (``ctx.original``); None when a
    stage answered the client instead (blocked)."""
    if outcome.blocked is not None:
        return None
    return orjson.loads(outcome.body) if outcome.body is not None else ctx.original


def send(rt: Runtime, api: ApiKind, host: str, path: str, headers: list[tuple[str, str]], raw: bytes, flow_id: str,
         loop: asyncio.AbstractEventLoop | None = None, **fields: Any) -> tuple[RequestContext, Outcome]:
    """:func:`run`, synchronously, for the in-process callers (replay, evaluations, benchmarks, tests):
    on ``loop`` (None: a fresh ``asyncio.run``); ``fields``: the rest of :class:`Incoming`. Raises Skip
    when the body cannot be read."""
    req = Incoming(api, host, path, headers, raw, flow_id, **fields)
    work = run(rt, req)
    ctx, outcome = loop.run_until_complete(work) if loop is not None else asyncio.run(work)
    if ctx is None or outcome is None:
        raise Skip(f"request {flow_id} not read (see its error event)")
    return ctx, outcome


def turn_of(api: ApiKind, model: str | None, message: dict[str, Any], usage: Usage | None = None,
            events: int = 1) -> AssembledTurn:
    """The assembled turn of an assistant ``message`` known whole (replayed, not streamed): its text and
    tool calls read as the stream assembler reads them."""
    text, calls = _text_and_calls(message)
    return AssembledTurn(api=api, model=model, message=message, text=text, tool_calls=calls, usage=usage,
                         stop_reason="tool_use" if calls else "end_turn", error=None, complete=True, events=events)


def _text_and_calls(message: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    content = message.get("content")
    if isinstance(content, str):
        return content, []
    blocks = [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
    for item in message.get("output") or []:  # a Responses answer: output items, messages among them
        if isinstance(item, dict) and item.get("type") == "message" and isinstance(item.get("content"), list):
            blocks += [b for b in item["content"] if isinstance(b, dict)]
    text = "\n".join(b.get("text", "") for b in blocks if b.get("type") in ("text", "output_text"))
    calls = [{"id": b.get("id"), "name": b.get("name"), "input": b.get("input")} for b in blocks
             if b.get("type") == "tool_use"]
    return text, calls


def complete(rt: Runtime, ctx: RequestContext, turn: AssembledTurn, *, calibrate: bool = True, announce: bool = True) -> None:
    """The response's side: the ``cw_turn_complete`` hooks (memory ingestion, budgets), the token counter
    calibrated on the provider's usage, the ``turn`` event. Each part fails open.

    Replay passes ``calibrate=False, announce=False``: its usage is its own bill, not the provider's,
    and its report counts a request's own events."""
    try:  # first: memory hands the turn's items in here (calibration writes the state store, a lock of every request's)
        rt.pm.hook.cw_turn_complete(ctx=ctx, turn=turn)
    except Exception as e:  # a hook's failure is reported; the proxy (or the replay) goes on
        ctx.emit("error", where="cw_turn_complete", message=f"{type(e).__name__}: {e}")
    try:
        if calibrate and turn.usage is not None and ctx.settings.tokens.calibrate:
            rt.tokens.observe_usage(ctx.model, ctx.tokens_out, turn.usage)
    except Exception as e:
        ctx.emit("error", where="calibration", message=f"{type(e).__name__}: {e}")
    if announce:  # (priced here, by the settings' prices: the TUI and the metrics read the price off the event)
        price = known_price(turn.model or ctx.model, ctx.settings.prices)
        ctx.emit("turn", **turn.summary(), tags=ctx.notes.get("tags"), tokens_sent=ctx.tokens_out, tokens_in=ctx.tokens_in,
                 price=asdict(price) if price else None)
