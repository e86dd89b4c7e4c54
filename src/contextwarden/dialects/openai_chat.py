"""OpenAI Chat Completions (``/v1/chat/completions``): messages with ``tool_calls`` and ``role: tool`` answers."""

from __future__ import annotations

from typing import Any

from ..conversation import Entry, ToolCall, maybe_json, side_of
from ..models import openai_chat as oc
from ..models.base import ApiKind
from ..streams.openai_chat import ChatAssembler
from . import Dialect


def entry(index: int, m: Any) -> Entry:
    if not isinstance(m, dict):
        return Entry(index, "user", "user", turn_start=True)
    role = str(m.get("role", "user"))
    if role == "tool":
        tid = m.get("tool_call_id")
        return Entry(index, role, "user", results=(tid,) if isinstance(tid, str) else ())
    side = side_of(role)
    uses = tuple(str(tc.get("id", "")) for tc in (m.get("tool_calls") or []) if isinstance(tc, dict))
    return Entry(index, role, side, uses=uses, turn_start=side == "user")


def tool_calls(msgs: list[Any]) -> dict[str, ToolCall]:
    out: dict[str, ToolCall] = {}
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            continue
        for tc in m.get("tool_calls") or []:
            if isinstance(tc, dict):
                fn = tc.get("function") or {}
                out.setdefault(str(tc.get("id", "")), ToolCall(str(tc.get("id", "")), str(fn.get("name", "")),
                                                               maybe_json(fn.get("arguments")), i))
    return out


def check(new: dict, original: dict, *a) -> list:
    from ..validate import _chat

    return _chat(new, original)


def inject(req, block: str) -> str:
    from ..memory.inject import _chat

    return _chat(req, block, parts=True)


def injectable(req) -> None:
    from ..memory.inject import check_chat

    check_chat(req)


def summary_message(text: str, cache_control: dict | None = None) -> oc.ChatMessage:
    return oc.ChatMessage.model_validate({"role": "user", "content": text})


def error_answer(message: str, stream: bool) -> tuple[bytes, dict[str, str]]:
    """OpenAI's error object (chat and responses): the SDKs map a 429 to RateLimitError and expose
    type and code."""
    import orjson

    return (orjson.dumps({"error": {"message": message, "type": "tokens", "param": None, "code": "rate_limit_exceeded"}}),
            {"content-type": "application/json"})


def reply(text: str) -> dict:
    return {"role": "assistant", "content": text}


def answer_messages(message: dict) -> list:
    return [message]


DIALECT = Dialect(ApiKind.OPENAI_CHAT, "messages", oc.ChatRequest, oc.ChatMessage, entry, tool_calls, check,
                  ChatAssembler, inject, injectable, oc.message_text, summary_message, error_answer,
                  ("api.openai.com", "/v1/chat/completions"), reply, answer_messages)
