"""Baseline stage ``truncation`` for ``contextwarden replay --baselines`` (docs/REPLAY.md): last-N truncation.

Above a token target (``ctx.notes["replay"]["target_tokens"]``, the tokens the default profile sent, else
``plugins.truncation.target_fraction`` of the window) the oldest whole turns are dropped until it fits.
Off unless a profile sets ``plugins.truncation.enabled`` (``baseline-truncation``); registered by the
replay for that baseline only. Stateless: the kept prefix moves every step, which is what it costs."""

from __future__ import annotations

from contextwarden import hookimpl
from contextwarden.models.anthropic import TextBlock
from contextwarden.wire.dialects import ANTHROPIC, dialect

name = "truncation"
TRUNCATED = "[earlier conversation truncated]"


@hookimpl
def cw_request(ctx) -> None:
    cfg = ctx.settings.plugins.get(name) or {}
    if not cfg.get("enabled") or dialect(ctx.api) is not ANTHROPIC:  # (typed messages of content blocks)
        return
    target = (ctx.notes.get("replay") or {}).get("target_tokens")
    if target is None:
        target = int(float(cfg.get("target_fraction", 0.25)) * ctx.settings.tokens.context_window)
    tokens = ctx.runtime.tokens
    total = ctx.tokens_in if ctx.tokens_in is not None else tokens.count_request(ctx.api, ctx.original, ctx.model)
    if total <= target:
        return
    msgs = list(ctx.request.messages)
    sizes = [tokens.count_message(ctx.api, m, ctx.model) for m in msgs]
    excess = total - target
    k, dropped = 0, 0
    while k < len(msgs) - 1 and dropped < excess:
        dropped += sizes[k]
        k += 1
    while k < len(msgs) - 1 and msgs[k].role != "user":  # the kept history starts with a user message
        k += 1
    if k == 0:
        return
    first = msgs[k]
    if isinstance(first.content, list) and any(getattr(b, "type", None) == "tool_result" for b in first.content):
        kept = [b for b in first.content if getattr(b, "type", None) != "tool_result"]  # their calls were dropped
        first = first.model_copy(update={"content": kept or [TextBlock(type="text", text=TRUNCATED)]})
    ctx.request.messages = [first] + msgs[k + 1:]
    ctx.emit("truncation", dropped=k, tokens_before=total, target=target)
