"""Baseline stage ``truncation``: the field's simplest context manager, for ``contextwarden replay --baselines``.

Last-N truncation: when the request is above a token target, the oldest messages are dropped (whole
turns: the kept history starts at a user message, and tool results whose call was dropped go with it)
until it fits. The target is ``ctx.notes["replay"]["target_tokens"]`` when the replay gives one (the
tokens our default profile sent for the same request: truncation "to the same tokens we send"), else
``plugins.truncation.target_fraction`` of the context window.

Off unless a profile sets ``plugins.truncation.enabled: true`` (the ``baseline-truncation`` profile);
the replay registers it only for that baseline (``replay(..., extra_plugins=...)``), so the proxy's
own pipelines never carry it. It is stateless: every request is cut afresh, so the kept prefix moves
with every step, and the prompt cache is written again each time (which is what the baseline costs).
"""

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
