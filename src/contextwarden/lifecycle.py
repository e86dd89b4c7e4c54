"""One request's lifecycle, the same for every caller: the interceptor (HTTP and the Responses WebSocket),
the observer, the count_tokens rewrite, replay, the memory evaluations, the benchmarks and the tests.

    request   admit:    prepare → count (tokens_in) → the ``request`` event (when announced)
              process:  the stages → validate → serialise (pipeline.Pipeline; fails open)
              sent:     the body that went upstream
    response  complete: the assembled turn → calibration → ``cw_turn_complete`` hooks → the ``turn`` event

Nothing here keeps state: each call works on the runtime and the request's context it is given.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson

from .context import RequestContext
from .models.base import ApiKind
from .pipeline import Outcome, Pipeline, Skip, count_tokens, prepare, request_event

__all__ = ["Skip", "admit", "process", "admit_and_process", "send", "sent", "complete", "turn_of"]


def admit(rt, flow_id: str, api: ApiKind, host: str, path: str, headers: list[tuple[str, str]], raw: bytes,
          consumed: dict[str, str] | None = None, transport: str = "http", *,
          mode: str | Callable[[RequestContext], str] | None = None,
          count: bool = True, tenant: str | None = None, notes: dict[str, Any] | None = None,
          settings=None) -> RequestContext:
    """prepare → count → announce: the request's context with ``tokens_in`` (``timings["count_in"]``)
    and, when ``mode`` is given, its ``request`` event (``mode``: the event's mode, or a function of the
    context giving it: the interceptor's depends on the session's bypass). Raises Skip (the body is not one we read).

    ``tenant``, ``notes``, ``settings``: set on the context before counting (benchmarks use stores
    built for named tenants; replay hands the stages its clock; a test a run-time settings change).
    A failure after parsing (counting, the event) fails open: an ``error`` event, the request goes on."""
    ctx = prepare(rt, flow_id, api, host, path, headers, raw, consumed, transport)
    if tenant is not None:
        ctx.tenant = tenant
    if settings is not None:
        ctx.settings = settings
    if notes:
        ctx.notes.update(notes)
    try:
        if count:
            t0 = time.perf_counter()
            ctx.tokens_in = count_tokens(ctx, ctx.original)
            ctx.timings["count_in"] = round((time.perf_counter() - t0) * 1000, 3)
        if mode is not None:
            request_event(ctx, len(raw), mode(ctx) if callable(mode) else mode)
    except Exception as e:
        ctx.emit("error", where="request", message=f"{type(e).__name__}: {e}", action="request event incomplete")
    return ctx


async def process(rt, ctx: RequestContext) -> Outcome:
    """The stages, the validator and the serialiser (``Pipeline.process``: fails open)."""
    return await Pipeline(rt).process(ctx)


async def admit_and_process(rt, admit: Callable[[], tuple[RequestContext | None, bool]]
                            ) -> tuple[RequestContext | None, Outcome | None]:
    """``admit()`` (a call of :func:`admit` giving ``(ctx, whether the stages run)``) and :func:`process`
    in ONE trip to a stage thread and back (``Pipeline.admit_and_process``): the proxy's way."""
    return await Pipeline(rt).admit_and_process(admit)


def sent(ctx: RequestContext, outcome: Outcome) -> dict[str, Any] | None:
    """The body that went upstream: the rewrite, or the client's own (``ctx.original``); None when a
    stage answered the client instead (blocked)."""
    if outcome.blocked is not None:
        return None
    return orjson.loads(outcome.body) if outcome.body is not None else ctx.original


def send(rt, api: ApiKind, host: str, path: str, headers: list[tuple[str, str]], raw: bytes, flow_id: str,
         loop: asyncio.AbstractEventLoop | None = None, **admit_kw) -> tuple[RequestContext, Outcome]:
    """One request's whole way in, synchronously (the in-process callers: replay, evaluations,
    benchmarks, tests): ``admit`` then ``process`` on ``loop`` (None: a fresh ``asyncio.run``)."""
    ctx = admit(rt, flow_id, api, host, path, headers, raw, **admit_kw)
    work = process(rt, ctx)
    return ctx, (loop.run_until_complete(work) if loop is not None else asyncio.run(work))


def turn_of(api: ApiKind, model: str | None, message: dict[str, Any], usage=None, events: int = 1):
    """The assembled turn of an assistant ``message`` known whole (replayed, not streamed): its text and
    tool calls read as the stream assembler reads them."""
    from .streams.turn import AssembledTurn

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


def complete(rt, ctx: RequestContext, turn, *, calibrate: bool = True, announce: bool = True) -> None:
    """The response's side: the token counter calibrated on the provider's usage, the
    ``cw_turn_complete`` hooks (memory ingestion, budgets), the ``turn`` event. Each part fails open.

    Replay passes ``calibrate=False, announce=False``: its usage is its own bill, not the provider's,
    and its report counts a request's own events."""
    try:
        if calibrate and turn.usage is not None and ctx.settings.tokens.calibrate:
            rt.tokens.observe_usage(ctx.model, ctx.tokens_out, turn.usage)
    except Exception as e:
        ctx.emit("error", where="calibration", message=f"{type(e).__name__}: {e}")
    try:
        rt.pm.hook.cw_turn_complete(ctx=ctx, turn=turn)
    except Exception as e:  # a hook's failure is reported; the proxy (or the replay) goes on
        ctx.emit("error", where="cw_turn_complete", message=f"{type(e).__name__}: {e}")
    if announce:
        ctx.emit("turn", **turn.summary(), tags=ctx.notes.get("tags"), tokens_sent=ctx.tokens_out, tokens_in=ctx.tokens_in)
