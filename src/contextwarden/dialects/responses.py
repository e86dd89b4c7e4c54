"""OpenAI Responses (``/v1/responses``, Codex): an ``input`` list of items (messages, ``*_call`` and
``*_call_output`` items, reasoning); items stay the client's dicts (no typed history)."""

from __future__ import annotations

from typing import Any

from ..conversation import Entry, ToolCall, maybe_json, side_of
from ..models import openai_responses as orr
from ..models.base import ApiKind
from ..streams.openai_responses import ResponsesAssembler
from . import Dialect, openai_chat

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


def check(new: dict, original: dict, *a) -> list:
    from ..validate import _responses

    return _responses(new, original)


def inject(req, block: str) -> str:
    from ..memory.inject import _responses

    return _responses(req, block)


def injectable(req) -> None:
    from ..memory.inject import check_responses

    check_responses(req)


def summary_message(text: str, cache_control: dict | None = None) -> dict:
    return {"role": "user", "content": text}


def reply(text: str) -> dict:
    return {"role": "assistant", "output": [{"type": "message", "role": "assistant",
                                             "content": [{"type": "output_text", "text": text}]}]}


def answer_messages(message: dict) -> list:
    """A response's output items (messages, calls, reasoning): each an entry of the next ``input``."""
    out = message.get("output")
    return [o for o in out if isinstance(o, dict)] if isinstance(out, list) else []


DIALECT = Dialect(ApiKind.OPENAI_RESPONSES, "input", orr.ResponsesRequest, None, entry, tool_calls, check,
                  ResponsesAssembler, inject, injectable, orr.item_text, summary_message, openai_chat.error_answer,
                  ("api.openai.com", "/v1/responses"), reply, answer_messages, system_key="instructions")
