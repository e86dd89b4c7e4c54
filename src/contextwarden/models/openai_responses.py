"""OpenAI Responses request body (``POST /v1/responses``)."""

from __future__ import annotations

from typing import Any

from .base import REQUEST_CONFIG, WireModel


class ResponsesRequest(WireModel):
    model_config = REQUEST_CONFIG
    model: str | None = None
    # a string, or a list of input items (messages, function_call, function_call_output, ...)
    input: Any = None
    instructions: Any = None
    tools: Any = None
    stream: bool | None = None
    user: str | None = None
    prompt_cache_key: str | None = None
    previous_response_id: str | None = None


def item_text(item: Any) -> str:
    if isinstance(item, str):
        return item
    if not isinstance(item, dict):
        return ""
    t = item.get("type")
    if t == "function_call":
        return f"{item.get('name', '')} {item.get('arguments', '')}"
    if t == "function_call_output":
        out = item.get("output")
        return out if isinstance(out, str) else str(out)
    c = item.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        return "\n".join(p.get("text", "") for p in c if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""
