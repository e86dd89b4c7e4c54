"""Putting retrieved memory into a request without costing the provider's prompt cache.

A prompt cache holds a prefix of the request up to a breakpoint. Memory changes from request to request,
so it goes where nothing cached follows it: at the END of the LAST user message (after the last
``cache_control`` breakpoint, which Claude Code puts on that message's last block), never in ``system``.

- Anthropic: a text block appended to the last user message's content (a string content becomes
  ``[text, memory-text]``; tool_result blocks stay first, as the API wants).
- OpenAI chat / Ollama: the text appended to the last message when it is the user's (a string content
  gets it after a blank line, a list of parts gets a text part). In a tool loop the last message is a
  ``tool`` message and nothing is injected: a user message earlier in the list would move the cached
  prefix.
- OpenAI Responses: appended to a string ``input``, or to the last input item when it is a user message.

The block is clearly delimited and says where each excerpt comes from (session, message number, time).
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from ..models.base import ApiKind

OPEN = "<contextwarden-memory>"
CLOSE = "</contextwarden-memory>"
PREAMBLE = ("Excerpts of earlier conversation that are no longer in this context, retrieved by the "
            "contextwarden proxy because they may be relevant: reference material, not part of the user's "
            "message. [#N role time] marks message N of the session named above it.")


def _day(item) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(item.ts)) if getattr(item, "ts", None) else "?"


def provenance(item) -> str:
    """``[#12 user 14:02]``; a tool result adds its tool and the memory id its clearing stub names. The
    session and the day head the group the item is in (:func:`render_block`)."""
    when = time.strftime("%H:%M", time.localtime(item.ts)) if getattr(item, "ts", None) else "?"
    tool = getattr(item, "tool", None)
    parts = [f"#{item.turn}", f"{item.role} {tool}" if tool else item.role]
    if item.kind != "message":
        parts.append(item.source_id or item.memory_id)
    parts.append(when)
    return "[" + " ".join(p for p in parts if p) + "]"


def render_item(item) -> str:
    """One excerpt as it appears in the block (used for token accounting too)."""
    text = item.text.replace(CLOSE, "</contextwarden-memory\u200b>")  # an excerpt cannot close the block
    sep = "\n" if "\n" in text or len(text) > 300 else " "
    return f"{provenance(item)}{sep}{text}"


def render_block(items: Iterable) -> str:
    """The memory block: excerpts grouped by session and day, in conversation order."""
    items = sorted(items, key=lambda it: (str(it.session), it.turn, it.ts))
    lines = [OPEN, PREAMBLE]
    group = None
    for it in items:
        g = (it.session, _day(it))
        if g != group:
            group = g
            lines.append(f"## session {str(it.session)[:16]} · {g[1]}")
        lines.append(render_item(it))
    lines.append(CLOSE)
    return "\n".join(lines)


BLOCK_OVERHEAD_TEXT = f"{OPEN}\n{PREAMBLE}\n## session 0123456789abcdef · 2026-01-01\n{CLOSE}"


def strip_blocks(text: str) -> str:
    """Text with any memory block removed (a client that echoes one back must not get it stored)."""
    while OPEN in text:
        start = text.index(OPEN)
        end = text.find(CLOSE, start)
        if end < 0:
            text = text[:start]
            break
        text = text[:start].rstrip() + text[end + len(CLOSE):]
    return text


class NotInjectable(Exception):
    """Memory cannot go into this request without moving a cached prefix (the reason says why)."""


def _has_cache_control(obj: Any) -> bool:
    if isinstance(obj, dict):
        return "cache_control" in obj or any(_has_cache_control(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_cache_control(v) for v in obj)
    return False


def last_user_index(messages: list, role_of) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        if role_of(messages[i]) == "user":
            return i
    return None


def check(api: ApiKind, request) -> None:
    """Raise :class:`NotInjectable` when ``request`` has no cache-safe place for memory (checked before
    retrieval, so a tool loop does not pay for a search it cannot use)."""
    if api is ApiKind.ANTHROPIC:
        msgs = request.messages
        i = last_user_index(msgs, lambda m: m.role)
        if i is None:
            raise NotInjectable("no user message")
        if any(_has_cache_control(later.wire()) for later in msgs[i + 1:]):
            raise NotInjectable("a cache breakpoint follows the last user message")
    elif api in (ApiKind.OPENAI_CHAT, ApiKind.OLLAMA_CHAT):
        if not request.messages or request.messages[-1].role != "user":
            raise NotInjectable("the last message is not the user's (tool loop or prefill)")
    elif api is ApiKind.OPENAI_RESPONSES:
        inp = request.input
        if isinstance(inp, str):
            return
        if not isinstance(inp, list) or not inp:
            raise NotInjectable("no input")
        last = inp[-1]
        if not isinstance(last, str) and (not isinstance(last, dict) or last.get("role") != "user"
                                          or last.get("type", "message") != "message"):
            raise NotInjectable("the last input item is not a user message (tool loop)")
    else:
        raise NotInjectable(f"unsupported api {api}")


def inject(api: ApiKind, request, block: str) -> str:
    """Append ``block`` to ``request`` (the typed model, in place). Returns where it went; raises
    :class:`NotInjectable` when there is no cache-safe place."""
    if api is ApiKind.ANTHROPIC:
        return _anthropic(request, block)
    if api in (ApiKind.OPENAI_CHAT, ApiKind.OLLAMA_CHAT):
        return _chat(request, block, parts=api is ApiKind.OPENAI_CHAT)
    if api is ApiKind.OPENAI_RESPONSES:
        return _responses(request, block)
    raise NotInjectable(f"unsupported api {api}")


def _anthropic(req, block: str) -> str:
    from ..models.anthropic import TextBlock

    msgs = req.messages
    i = last_user_index(msgs, lambda m: m.role)
    if i is None:
        raise NotInjectable("no user message")
    for later in msgs[i + 1:]:
        if _has_cache_control(later.wire()):
            raise NotInjectable("a cache breakpoint follows the last user message")
    m = msgs[i]
    if isinstance(m.content, str):
        m.content = [TextBlock(type="text", text=m.content), TextBlock(type="text", text=block)]
    else:
        m.content = list(m.content) + [TextBlock(type="text", text=block)]
    return f"messages[{i}] text block"


def _chat(req, block: str, parts: bool) -> str:
    msgs = req.messages
    if not msgs or msgs[-1].role != "user":
        raise NotInjectable("the last message is not the user's (tool loop or prefill)")
    i = len(msgs) - 1
    m = msgs[i]
    c = m.content
    if isinstance(c, list) and parts:
        m.content = list(c) + [{"type": "text", "text": block}]
        return f"messages[{i}] text part"
    if isinstance(c, str):
        m.content = (c.rstrip() + "\n\n" + block) if c.strip() else block
        return f"messages[{i}] content"
    if c is None:
        m.content = block
        return f"messages[{i}] content"
    raise NotInjectable("the last user message's content has an unknown shape")


def _responses(req, block: str) -> str:
    inp = req.input
    if isinstance(inp, str):
        req.input = inp.rstrip() + "\n\n" + block
        return "input"
    if not isinstance(inp, list) or not inp:
        raise NotInjectable("no input")
    last = inp[-1]
    # a new list: the model's list may be the very list of ctx.original, which is never mutated
    if isinstance(last, str):
        req.input = inp[:-1] + [last.rstrip() + "\n\n" + block]
        return f"input[{len(inp) - 1}]"
    if not isinstance(last, dict) or last.get("role") != "user" or last.get("type", "message") != "message":
        raise NotInjectable("the last input item is not a user message (tool loop)")
    c = last.get("content")
    new = dict(last)
    if isinstance(c, list):
        new["content"] = list(c) + [{"type": "input_text", "text": block}]
    elif isinstance(c, str):
        new["content"] = c.rstrip() + "\n\n" + block
    else:
        raise NotInjectable("the last user message's content has an unknown shape")
    req.input = inp[:-1] + [new]
    return f"input[{len(inp) - 1}]"
