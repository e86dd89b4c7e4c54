"""OpenAI Chat Completions request body (``POST /v1/chat/completions``); Ollama's /api/chat too."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from .base import REQUEST_CONFIG, WireModel, frozen_list


class ToolCallFunction(WireModel):
    name: str = ""
    arguments: str | Any = ""


class ToolCall(WireModel):
    id: str = ""
    type: str = "function"
    function: ToolCallFunction | None = None


class ChatMessage(WireModel):
    role: str
    # a string, a list of content parts, or None (assistant messages with tool_calls only)
    content: Any = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    _frozen = field_validator("tool_calls")(classmethod(lambda cls, v: frozen_list(v)))


class ChatRequest(WireModel):
    model_config = REQUEST_CONFIG
    model: str | None = None
    messages: list[ChatMessage] = []
    tools: Any = None
    stream: bool | None = None
    user: str | None = None
    prompt_cache_key: str | None = None


def message_text(msg: ChatMessage) -> str:
    c = msg.content
    parts: list[str] = []
    if isinstance(c, str):
        parts.append(c)
    elif isinstance(c, list):
        for p in c:
            if isinstance(p, dict) and isinstance(p.get("text"), str):
                parts.append(p["text"])
    for tc in msg.tool_calls or []:
        if tc.function is not None:
            parts.append(f"{tc.function.name} {tc.function.arguments}")
    return "\n".join(parts)
