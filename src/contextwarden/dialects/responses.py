"""OpenAI Responses (``/v1/responses``, Codex): an ``input`` list of items (messages, ``*_call`` and
``*_call_output`` items, reasoning); items stay the client's dicts (no typed history)."""

from __future__ import annotations

import math
from typing import Any

import orjson

from ..conversation import Entry, ToolCall, maybe_json, side_of
from ..memory.inject import _responses as inject
from ..memory.inject import check_responses as injectable
from ..models import openai_responses as orr
from ..models.base import ApiKind
from ..streams.openai_responses import ResponsesAssembler
from ..tokens import BLOCK_OVERHEAD, CHARS_PER_TOKEN, MESSAGE_OVERHEAD, TOOL_CALL_OVERHEAD
from ..validate import _responses as check
from . import NO_PROVIDER, Dialect, ProviderContext, last_index, openai_chat, rewrite_parts, taking_over

# input items produced by the model (the assistant side of the conversation)
ASSISTANT_TYPES = frozenset({
    "reasoning", "function_call", "custom_tool_call", "computer_call", "local_shell_call", "web_search_call",
    "file_search_call", "code_interpreter_call", "image_generation_call", "mcp_call", "mcp_list_tools",
    "mcp_approval_request", "shell_call", "apply_patch_call",
})


def entry(index: int, m: Any) -> Entry:
    if not isinstance(m, dict):  # a bare string input item is a user message
        return Entry(index, "user", "user", turn_start=True)
    t = m.get("type")
    if t is None or t == "message":
        role = str(m.get("role", "user"))
        side = side_of(role)
        return Entry(index, role, side, turn_start=side == "user")
    cid = m.get("call_id")
    if t.endswith("_output"):
        return Entry(index, "tool", "user", results=(cid,) if isinstance(cid, str) else ())
    if t in ASSISTANT_TYPES or t.endswith("_call"):
        # server-side calls (web_search_call...) carry no call_id: nothing for the client to answer
        opens = (cid,) if isinstance(cid, str) and t.endswith("_call") else ()
        return Entry(index, "assistant", "assistant", uses=opens)
    return Entry(index, str(t), "user")


def tool_calls(msgs: list[Any]) -> dict[str, ToolCall]:
    out: dict[str, ToolCall] = {}
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            continue
        t = m.get("type")
        if isinstance(t, str) and t.endswith("_call") and isinstance(m.get("call_id"), str):
            args = m.get("arguments", m.get("input", m.get("action")))
            out.setdefault(m["call_id"], ToolCall(m["call_id"], str(m.get("name", t)), maybe_json(args), i))
    return out


def summary_message(text: str, cache_control: dict | None = None) -> dict:
    return {"role": "user", "content": text}


def reply(text: str) -> dict:
    return {"role": "assistant", "output": [{"type": "message", "role": "assistant",
                                             "content": [{"type": "output_text", "text": text}]}]}


def answer_messages(message: dict) -> list:
    """A response's output items (messages, calls, reasoning): each an entry of the next ``input``."""
    out = message.get("output")
    return [o for o in out if isinstance(o, dict)] if isinstance(out, list) else []


def rewrite_text(it: Any, fn) -> Any:
    if isinstance(it, str):  # the ``input`` string, or a bare string item: the user's
        return fn(it)
    if isinstance(it, dict) and it.get("role") == "user" and it.get("type") in (None, "message"):
        c = rewrite_parts(it.get("content"), fn, ("input_text", "text"))
        return None if c is None else {**it, "content": c}
    return None


def item_texts(m: Any, out: list) -> None:
    if t := orr.item_text(m.wire() if hasattr(m, "wire") else m):
        out.append(t)


def message_tokens(tc, item: dict, enc) -> int:
    api, t = ApiKind.OPENAI_RESPONSES, item.get("type")
    if "role" in item and t in (None, "message"):
        return MESSAGE_OVERHEAD + tc._content(api, item.get("content"), enc)
    if t in ("function_call", "custom_tool_call"):
        return TOOL_CALL_OVERHEAD + tc._text(item.get("name"), enc) + tc._text(item.get("arguments", item.get("input")), enc)
    if t in ("function_call_output", "custom_tool_call_output") or (isinstance(t, str) and t.endswith("_output")):
        out = item.get("output")
        if isinstance(out, list):
            return TOOL_CALL_OVERHEAD + sum(tc._block(api, x, enc) for x in out)
        return TOOL_CALL_OVERHEAD + tc._text(out, enc)
    if t == "reasoning":
        n = BLOCK_OVERHEAD + sum(tc._text(s.get("text"), enc) for s in item.get("summary") or [] if isinstance(s, dict))
        if isinstance(item.get("encrypted_content"), str):
            n += math.ceil(len(item["encrypted_content"]) / CHARS_PER_TOKEN / 2)
        return n
    return tc._block(api, item, enc)


def memory_items(items: list | str, start_turn: int, clean_text: dict[int, str], add) -> None:
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    tool_names: dict[str, str] = {}
    prefix = True
    for i, item in enumerate(items):
        turn = start_turn + i
        item = item.wire() if hasattr(item, "wire") else item
        if isinstance(item, str):
            item = {"role": "user", "content": item}
        if not isinstance(item, dict):
            continue
        t = item.get("type") or ("message" if "role" in item else None)
        role = str(item.get("role") or "assistant")
        if prefix and t == "message" and role in ("system", "developer"):
            continue
        prefix = False
        if t == "reasoning":
            continue
        if t and t.endswith("_call") and item.get("call_id"):
            tool_names[item["call_id"]] = item.get("name") or t.removesuffix("_call")
        if t and t.endswith("_call_output"):
            out = item.get("output")
            text = out if isinstance(out, str) else orr.item_text(item) or (orjson.dumps(out).decode() if out is not None else "")
            add(clean_text.get(turn, text), turn, "tool", "tool_result", tool_names.get(item.get("call_id", "")))
        else:
            add(clean_text.get(turn, orr.item_text(item)), turn, role if t == "message" else "assistant", "message")


def summary_route(path: str) -> tuple[str, ApiKind]:
    """A summary is asked of the same provider's Chat Completions endpoint (one answer, no items)."""
    return (path[: -len("/responses")] + "/chat/completions" if path.endswith("/responses") else "/v1/chat/completions",
            ApiKind.OPENAI_CHAT)


def _compaction_item(it: Any) -> bool:
    """The provider's compaction in the history: ``compaction`` items (``encrypted_content``: the summary
    the server made; Codex's ``compaction_summary`` too), not the ``compaction_trigger`` that asks for one."""
    return isinstance(it, dict) and isinstance(it.get("type"), str) and it["type"].startswith("compaction") \
        and it["type"] != "compaction_trigger"


def provider(body: dict, known: tuple[int, int] | None, take_over: frozenset[str]) -> ProviderContext:
    """``context_management`` entries of type ``compaction`` (``compact_threshold``), an on-demand
    ``compaction_trigger`` (the last input item: never taken over, the client asked for it now), and the
    latest compaction item (kept byte-exact, with all before it)."""
    cm = body.get("context_management")
    auto = isinstance(cm, list) and any(isinstance(e, dict) and e.get("type") == "compaction" for e in cm)
    items = body.get("input")
    boundary = last_index(items, _compaction_item, known)
    now = isinstance(items, list) and bool(items) and isinstance(items[-1], dict) and items[-1].get("type") == "compaction_trigger"
    if not auto and not boundary and not now:
        return NO_PROVIDER
    taken = taking_over({"compaction": auto}, take_over)
    update: tuple = ()
    if taken:
        kept = [e for e in cm if not (isinstance(e, dict) and e.get("type") == "compaction")]
        update = (("context_management", kept or None),)
    return ProviderContext(compacts=(auto and not taken) or now, boundary=boundary, taken=taken, update=update)


DIALECT = Dialect(ApiKind.OPENAI_RESPONSES, "input", orr.ResponsesRequest, None, entry, tool_calls, check,
                  ResponsesAssembler, inject, injectable, orr.item_text, summary_message, openai_chat.error_answer,
                  ("api.openai.com", "/v1/responses"), reply, answer_messages, rewrite_text, item_texts, message_tokens,
                  system_key="instructions", summary_route=summary_route,
                  memory_items=memory_items, provider=provider)
