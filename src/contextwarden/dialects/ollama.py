"""Ollama's native ``/api/chat``: OpenAI-chat-shaped messages; content is a string (no parts), NDJSON streams."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from ..memory.inject import _chat
from ..models.base import ApiKind
from ..streams.ollama import OllamaAssembler
from . import openai_chat


def error_answer(message: str, stream: bool, kind: str = "rate_limit") -> tuple[bytes, dict[str, str]]:
    import orjson

    return orjson.dumps({"error": message}), {"content-type": "application/json; charset=utf-8"}


def summary_request(auth: dict, model: str, prompt: str, text: str, max_tokens: int) -> tuple[dict, dict]:
    body, headers = openai_chat.summary_request(auth, model, prompt, text, max_tokens)
    return {"model": model, "stream": False, "messages": body["messages"]}, headers  # (no max_tokens in /api/chat)


DIALECT = replace(openai_chat.DIALECT, kind=ApiKind.OLLAMA_CHAT, assembler=OllamaAssembler,
                  inject=partial(_chat, parts=False), error_answer=error_answer, endpoint=("localhost", "/api/chat"),
                  summary_request=summary_request)
