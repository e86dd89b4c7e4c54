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


DIALECT = Dialect(ApiKind.ANTHROPIC, "messages", am.MessagesRequest, am.Message, entry, tool_calls, check,
                  AnthropicAssembler, inject, injectable)
