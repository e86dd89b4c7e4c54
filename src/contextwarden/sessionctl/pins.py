"""Pins: content of a session no stage may take out (clearing, compaction, compression).

A pin names a tool call id (``toolu_...``, ``call_...``: its result and its input), a message index
(as the client sends the history), or a text: every message whose text contains it. Stages ask:

- :func:`pinned_tool_ids` (clearing, compression): the tool ids among a request's tool results that are
  pinned, directly or through their message index or text;
- :func:`first_pinned_index` (compaction): the first message that must stay; nothing from there on is
  folded into a summary.

All of them cost nothing when the session has no pin.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from ..wire.conversation import result_text
from .ledger import control


def _matches(pin: dict[str, Any], tool_id: str | None, index: int | None, text: str | None) -> bool:
    kind, value = pin.get("kind"), pin.get("value")
    if kind == "tool":
        return tool_id is not None and tool_id == value
    if kind == "index":
        return index is not None and index == value
    if kind == "text":
        return bool(text) and isinstance(value, str) and value in str(text)
    return False


def pinned_tool_ids(ctx, items: Iterable[tuple[str, int, str]]) -> frozenset:
    """Of ``(tool id, message index, result text)`` items, the ids a pin names (empty without pins)."""
    pins = control(ctx).pins
    if not pins:
        return frozenset()
    return frozenset(tid for tid, idx, text in items if any(_matches(p, tid, idx, text) for p in pins))


def _message_text(m: Any) -> tuple[str, list[str]]:
    """(the message's text, its tool ids) from a wire message dict (any API)."""
    if not isinstance(m, dict):
        return (m if isinstance(m, str) else ""), []
    ids = [m[k] for k in ("call_id", "tool_call_id", "id")
           if isinstance(m.get(k), str) and (k != "id" or m.get("type") in ("function_call", "function_call_output"))]
    ids += [tc["id"] for tc in m.get("tool_calls") or () if isinstance(tc, dict) and isinstance(tc.get("id"), str)]
    parts = [m[k] for k in ("output", "arguments") if isinstance(m.get(k), str)]
    c = m.get("content")
    if isinstance(c, str):
        parts.append(c)
    elif isinstance(c, list):
        for b in c:
            if not isinstance(b, dict):
                continue
            t = b.get("type")
            if t == "tool_result":
                ids.append(str(b.get("tool_use_id")))
                parts.append(result_text(b.get("content")))
            elif t == "tool_use":
                ids.append(str(b.get("id")))
                parts.append(orjson.dumps(b.get("input"), default=str).decode())
            elif isinstance(b.get("text"), str):
                parts.append(b["text"])
    return "\n".join(parts), ids


def first_pinned_index(ctx, messages: list[Any]) -> int | None:
    """The index of the first of ``messages`` (wire dicts) a pin names, or None."""
    pins = control(ctx).pins
    if not pins:
        return None
    for i, m in enumerate(messages):
        text, ids = _message_text(m)
        if any(_matches(p, tid, i, text) for p in pins for tid in (ids if ids else (None,))):
            return i
    return None
