"""Anthropic Messages (``POST /v1/messages``): typed messages of content blocks, tool_use / tool_result."""

from __future__ import annotations

from typing import Any

from ..conversation import Entry, ToolCall, side_of
from ..memory.inject import _anthropic as inject
from ..memory.inject import check_anthropic as injectable
from ..models import anthropic as am
from ..models.base import ApiKind
from ..streams.anthropic import AnthropicAssembler
from ..tokens import ANTHROPIC_TOOL_OVERHEAD, MESSAGE_OVERHEAD
from ..validate import _anthropic as check
from . import NO_PROVIDER, Dialect, ProviderContext, history_dicts, last_index, taking_over

# context_management edits (Anthropic's context editing and compaction, beta context-management-2025-06-27
# and compact-2026-01-12), by what taking one over means (pipeline.provider_take_over)
CLEAR_TOOL_USES, CLEAR_THINKING, COMPACT = "clear_tool_uses_20250919", "clear_thinking_20251015", "compact_20260112"
_TAKEN_AS = {CLEAR_TOOL_USES: "clear_tool_uses", COMPACT: "compaction"}


def entry(index: int, m: Any) -> Entry:
    if not isinstance(m, dict):  # a bare string item is a user message
        return Entry(index, "user", "user", turn_start=True)
    role = str(m.get("role", "user"))
    side = side_of(role)
    c = m.get("content")
    if not isinstance(c, list):
        return Entry(index, role, side, turn_start=side == "user")
    uses, results, other = [], [], False
    for b in c:
        t = b.get("type") if isinstance(b, dict) else None
        if t == "tool_use":
            uses.append(str(b.get("id", "")))
        elif t == "tool_result":
            results.append(str(b.get("tool_use_id", "")))
        else:
            other = True
    return Entry(index, role, side, tuple(uses), tuple(results), turn_start=side == "user" and other)


def tool_calls(msgs: list[Any]) -> dict[str, ToolCall]:
    out: dict[str, ToolCall] = {}
    for i, m in enumerate(msgs):
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, list):
            for b in c:
                if isinstance(b, dict) and b.get("type") == "tool_use":
                    out.setdefault(str(b.get("id", "")), ToolCall(str(b.get("id", "")), str(b.get("name", "")), b.get("input"), i))
    return out


def summary_message(text: str, cache_control: dict | None = None) -> am.Message:
    block: dict[str, Any] = {"type": "text", "text": text}
    if cache_control:
        block["cache_control"] = cache_control
    return am.Message.model_validate({"role": "user", "content": [block]})


def error_answer(message: str, stream: bool, kind: str = "rate_limit") -> tuple[bytes, dict[str, str]]:
    import orjson

    err = orjson.dumps({"type": "error", "error": {"type": "rate_limit_error" if kind == "rate_limit" else "api_error",
                                                   "message": message}})
    if stream:  # what the client reads as a stream: one SSE `error` event carrying the same JSON
        return b"event: error\ndata: " + err + b"\n\n", {"content-type": "text/event-stream; charset=utf-8",
                                                         "cache-control": "no-cache"}
    return err, {"content-type": "application/json"}


def reply(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}] if text else []}


def answer_messages(message: dict) -> list:
    return [message]


def rewrite_text(m: am.Message, fn) -> am.Message | None:
    if m.role != "user":
        return None
    if isinstance(m.content, str):
        new = fn(m.content)
        return None if new is None else m.model_copy(update={"content": new})
    blocks = [b.model_copy(update={"text": t}) if isinstance(b, am.TextBlock) and (t := fn(b.text)) is not None else b
              for b in m.content]
    return m.model_copy(update={"content": blocks}) if any(a is not b for a, b in zip(blocks, m.content)) else None


def item_texts(m: Any, out: list) -> None:
    """Its text, or its blocks' texts (tool calls and results included) and, of two or more, all of them
    but the results together."""
    msg = m if isinstance(m, am.Message) else am.Message.model_validate(m)
    if isinstance(msg.content, str):
        out.append(msg.content)
        return
    texts = []
    for b in msg.content:
        if t := am.block_text(b):
            out.append(t)
            if not isinstance(b, am.ToolResultBlock):
                texts.append(t)
    if len(texts) > 1:
        out.append("\n".join(texts))


def message_tokens(tc, m: dict, enc) -> int:
    return MESSAGE_OVERHEAD + tc._content(ApiKind.ANTHROPIC, m.get("content"), enc)


def memory_items(messages: list, start_turn: int, clean_text: dict[int, str], add) -> None:
    tool_names: dict[str, str] = {}
    for turn, raw, role in history_dicts(messages, start_turn):
        texts, results = [], []
        for b in am.Message.model_validate(raw).blocks():
            if isinstance(b, am.ToolUseBlock):
                tool_names[b.id] = b.name
                texts.append(am.block_text(b))
            elif isinstance(b, am.ToolResultBlock):
                results.append(b)
            elif isinstance(b, am.TextBlock):
                texts.append(b.text)
        add(clean_text.get(turn, "\n".join(t for t in texts if t)), turn, role, "message")
        for b in results:
            add(am.content_text(b.content), turn, "tool", "tool_result", tool_names.get(b.tool_use_id))


def summary_request(auth: dict, model: str, prompt: str, text: str, max_tokens: int) -> tuple[dict, dict]:
    headers = {k: v for k, v in auth.items() if k != "anthropic-beta"} | {"content-type": "application/json"}
    headers.setdefault("anthropic-version", "2023-06-01")
    return {"model": model, "max_tokens": max_tokens, "system": prompt, "messages": [{"role": "user", "content": text}]}, headers


def _holds_compaction(m: Any) -> bool:
    c = m.get("content") if isinstance(m, dict) else None
    return isinstance(c, list) and any(isinstance(b, dict) and b.get("type") == "compaction" for b in c)


def provider(body: dict, known: tuple[int, int] | None, take_over: frozenset[str]) -> ProviderContext:
    """``context_management.edits`` and the latest message holding a ``compaction`` block (the API drops
    every block before it, and the block goes back as it came)."""
    cm = body.get("context_management")
    edits = cm.get("edits") if isinstance(cm, dict) else None
    kinds = {e.get("type") for e in edits if isinstance(e, dict)} if isinstance(edits, list) else set()
    boundary = last_index(body.get("messages"), _holds_compaction, known)
    if not kinds and not boundary:
        return NO_PROVIDER
    taken = taking_over({v: k in kinds for k, v in _TAKEN_AS.items()}, take_over)
    update: tuple = ()
    if taken:  # the client's edit out; what is left of context_management (none: the field goes)
        kept = [e for e in edits if not (isinstance(e, dict) and _TAKEN_AS.get(e.get("type")) in taken)]
        update = (("context_management", {**cm, "edits": kept} if kept else None),)
    keep_all = any(isinstance(e, dict) and e.get("type") == CLEAR_THINKING and e.get("keep") in ("all", {"type": "all"})
                   for e in edits) if kinds else False
    return ProviderContext(clears_tool_uses=CLEAR_TOOL_USES in kinds and "clear_tool_uses" not in taken,
                           clears_thinking=CLEAR_THINKING in kinds, keeps_thinking=keep_all, compacts=COMPACT in kinds and "compaction" not in taken,
                           boundary=boundary, dropped=max(0, boundary - 1), taken=taken, update=update)


DIALECT = Dialect(ApiKind.ANTHROPIC, "messages", am.MessagesRequest, am.Message, entry, tool_calls, check,
                  AnthropicAssembler, inject, injectable, am.message_text_fast, summary_message, error_answer,
                  ("api.anthropic.com", "/v1/messages"), reply, answer_messages, rewrite_text, item_texts,
                  message_tokens, (("max_tokens", 1024),), system_key="system", tool_frame=ANTHROPIC_TOOL_OVERHEAD,
                  cache_breakpoints=True, thinking_dropped=True, summary_request=summary_request,
                  memory_items=memory_items, provider=provider)
