"""Ollama's native /api/chat: NDJSON lines ``{"model", "message": {...}, "done": false}`` ending in a
``done: true`` line with the counts, or the same object whole when ``stream`` is false."""

from __future__ import annotations

from typing import Any

from contextwarden.models.base import ApiKind

from .assembler import Assembler, parse_arguments, str_or_none
from .turn import merge_usage


class OllamaAssembler(Assembler):
    def __init__(self, api: ApiKind) -> None:
        super().__init__(api)
        self._content: list[str] = []
        self._thinking: list[str] = []
        self._calls: list[dict[str, Any]] = []

    def event(self, name: str | None, data: dict[str, Any]) -> None:
        if self.failed(data):
            return
        self.model = str_or_none(data.get("model")) or self.model
        msg = data.get("message")
        if isinstance(msg, dict):
            if isinstance(msg.get("content"), str):
                self._content.append(msg["content"])
            if isinstance(msg.get("thinking"), str):
                self._thinking.append(msg["thinking"])
            calls = msg.get("tool_calls")
            if isinstance(calls, list):
                # Ollama sends each tool call whole (never as argument fragments)
                self._calls.extend(tc for tc in calls if isinstance(tc, dict))
        if data.get("done") is True:
            self.stop_reason = str_or_none(data.get("done_reason")) or self.stop_reason
            # Ollama reports no cache split: prompt_eval_count is the whole prompt it evaluated
            self.usage = merge_usage(self.usage, input_tokens=data.get("prompt_eval_count"),
                                     output_tokens=data.get("eval_count"))
            self.complete = True

    def body(self, data: dict[str, Any]) -> None:
        self.event(None, data)  # stream=false returns the same object, with done=true

    def assemble(self) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
        text = "".join(self._content)
        # Ollama's native shape: content always a string, arguments an object, as it sent them
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if self._thinking:
            message["thinking"] = "".join(self._thinking)
        if self._calls:
            message["tool_calls"] = self._calls
        fns = [fn if isinstance(fn := tc.get("function"), dict) else {} for tc in self._calls]
        tool_calls = [{"id": tc.get("id"), "name": fn.get("name"), "input": parse_arguments(fn.get("arguments"))}
                      for tc, fn in zip(self._calls, fns)]
        return message, text, tool_calls
