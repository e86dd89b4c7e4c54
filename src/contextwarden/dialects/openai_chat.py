"""OpenAI Chat Completions (``/v1/chat/completions``): messages with ``tool_calls`` and ``role: tool`` answers."""

from __future__ import annotations

from typing import Any

from ..conversation import Entry, ToolCall, maybe_json, side_of
from ..memory.inject import _chat as inject
from ..memory.inject import check_chat as injectable
from ..models import openai_chat as oc
from ..models.base import ApiKind
from ..streams.openai_chat import ChatAssembler
from ..tokens import MESSAGE_OVERHEAD, TOOL_CALL_OVERHEAD
from ..validate import _chat as check
from . import Dialect, history_dicts, rewrite_parts


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


def summary_message(text: str, cache_control: dict | None = None) -> oc.ChatMessage:
    return oc.ChatMessage.model_validate({"role": "user", "content": text})


def error_answer(message: str, stream: bool, kind: str = "rate_limit") -> tuple[bytes, dict[str, str]]:
    """OpenAI's error object (chat and responses): the SDKs map a 429 to RateLimitError and expose
    type and code; ``kind`` "upstream": the provider could not be reached (a server error)."""
    import orjson

    err = {"message": message, "type": "tokens", "param": None, "code": "rate_limit_exceeded"} if kind == "rate_limit" \
        else {"message": message, "type": "server_error", "param": None, "code": "upstream_unreachable"}
    return orjson.dumps({"error": err}), {"content-type": "application/json"}


def reply(text: str) -> dict:
    return {"role": "assistant", "content": text}


def answer_messages(message: dict) -> list:
    return [message]


def rewrite_text(m: oc.ChatMessage, fn) -> oc.ChatMessage | None:
    c = rewrite_parts(m.content, fn, ("text",)) if m.role == "user" else None
    return None if c is None else m.model_copy(update={"content": c})


def item_texts(m: Any, out: list) -> None:
    if t := oc.message_text(m if isinstance(m, oc.ChatMessage) else oc.ChatMessage.model_validate(m)):
        out.append(t)


def message_tokens(tc, m: dict, enc) -> int:
    """(OpenAI chat and Ollama: name, tool calls, reasoning text and Ollama's base64 images besides the content)"""
    n = MESSAGE_OVERHEAD + tc._content(ApiKind.OPENAI_CHAT, m.get("content"), enc)
    if m.get("name"):
        n += 1 + tc._text(m.get("name"), enc)
    for c in m.get("tool_calls") or []:
        fn = c.get("function") if isinstance(c, dict) else None
        if isinstance(fn, dict):
            n += TOOL_CALL_OVERHEAD + tc._text(fn.get("name"), enc) + tc._text(fn.get("arguments"), enc)
        else:
            n += TOOL_CALL_OVERHEAD + tc._text(c, enc)
    if m.get("tool_call_id"):
        n += 2
    for key in ("thinking", "reasoning_content", "reasoning"):  # Ollama / OpenAI-compatible reasoning text
        if isinstance(m.get(key), str):
            n += tc._text(m[key], enc)
    images = m.get("images")  # Ollama: a list of base64 strings
    if isinstance(images, list):
        n += len(images) * tc.settings.image_tokens
    return n


def memory_items(messages: list, start_turn: int, clean_text: dict[int, str], add) -> None:
    tool_names: dict[str, str] = {}
    for turn, raw, role in history_dicts(messages, start_turn):
        msg = oc.ChatMessage.model_validate(raw)
        for tc in msg.tool_calls or []:
            if tc.function is not None:
                tool_names[tc.id] = tc.function.name
        text = clean_text.get(turn, oc.message_text(msg))
        if role in ("tool", "function"):
            add(text, turn, "tool", "tool_result", tool_names.get(msg.tool_call_id or "") or msg.name or raw.get("tool_name"))
        else:
            add(text, turn, role, "message")


def summary_request(auth: dict, model: str, prompt: str, text: str, max_tokens: int) -> tuple[dict, dict]:
    return ({"model": model, "max_tokens": max_tokens, "messages": [{"role": "system", "content": prompt}, {"role": "user", "content": text}]},
            {**auth, "content-type": "application/json"})


DIALECT = Dialect(ApiKind.OPENAI_CHAT, "messages", oc.ChatRequest, oc.ChatMessage, entry, tool_calls, check,
                  ChatAssembler, inject, injectable, oc.message_text, summary_message, error_answer,
                  ("api.openai.com", "/v1/chat/completions"), reply, answer_messages, rewrite_text, item_texts,
                  message_tokens, summary_request=summary_request, memory_items=memory_items)
