"""Ollama's native ``/api/chat``: OpenAI-chat-shaped messages; content is a string (no parts), NDJSON streams."""

from __future__ import annotations

from typing import Any

import orjson

from ...models.base import ApiKind
from ..streams.ollama import OllamaAssembler
from .openai_chat import Chat


class Ollama(Chat):
    kind = ApiKind.OLLAMA_CHAT
    assembler = OllamaAssembler
    endpoint = ("localhost", "/api/chat")
    parts = False

    def serves(self, path: str, ollama: bool) -> bool:
        return ollama and path == "/api/chat"

    def known_host(self, host: str, hostport: str, proxy: Any, ollama: bool) -> bool:
        return ollama

    def error_answer(self, message: str, stream: bool, kind: str = "rate_limit") -> tuple[bytes, dict[str, str]]:
        return orjson.dumps({"error": message}), {"content-type": "application/json; charset=utf-8"}

    def summary_request(self, auth: dict[str, Any], model: str, prompt: str, text: str, max_tokens: int) -> tuple[dict[str, Any], dict[str, Any]]:
        body, headers = super().summary_request(auth, model, prompt, text, max_tokens)
        return {"model": model, "stream": False, "messages": body["messages"]}, headers  # (no max_tokens in /api/chat)
