"""Anthropic Messages (``POST /v1/messages``): typed messages of content blocks, tool_use / tool_result."""

from __future__ import annotations

from typing import Any

from ..conversation import Entry, ToolCall, side_of
from ..models import anthropic as am
from ..models.base import ApiKind
from ..streams.anthropic import AnthropicAssembler
from . import Dialect


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


def check(new: dict, original: dict, *a) -> list:
    from ..validate import _anthropic

    return _anthropic(new, original, *a)


def inject(req, block: str) -> str:
    from ..memory.inject import _anthropic

    return _anthropic(req, block)


def injectable(req) -> None:
    from ..memory.inject import check_anthropic

    check_anthropic(req)


def summary_message(text: str, cache_control: dict | None = None) -> am.Message:
    block: dict[str, Any] = {"type": "text", "text": text}
    if cache_control:
        block["cache_control"] = cache_control
    return am.Message.model_validate({"role": "user", "content": [block]})


def error_answer(message: str, stream: bool) -> tuple[bytes, dict[str, str]]:
    import orjson

    err = orjson.dumps({"type": "error", "error": {"type": "rate_limit_error", "message": message}})
    if stream:  # what the client reads as a stream: one SSE `error` event carrying the same JSON
        return b"event: error\ndata: " + err + b"\n\n", {"content-type": "text/event-stream; charset=utf-8",
                                                         "cache-control": "no-cache"}
    return err, {"content-type": "application/json"}


def reply(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}] if text else []}


def answer_messages(message: dict) -> list:
    return [message]


DIALECT = Dialect(ApiKind.ANTHROPIC, "messages", am.MessagesRequest, am.Message, entry, tool_calls, check,
                  AnthropicAssembler, inject, injectable, am.message_text_fast, summary_message, error_answer,
                  ("api.anthropic.com", "/v1/messages"), reply, answer_messages, (("max_tokens", 1024),),
                  system_key="system", cache_breakpoints=True, thinking_dropped=True)
