"""OpenAI Chat Completions: ``chat.completion.chunk`` SSE events ending in ``[DONE]``, or a whole body.

Also what OpenAI-compatible servers send (vLLM, DeepSeek, OpenRouter, Ollama's /v1), so the reader is
lenient where they differ: reasoning under ``reasoning_content`` or ``reasoning``, tool-call deltas
without an ``index``, arguments sent as an object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from contextwarden.models.base import ApiKind

from .assembler import Assembler, parse_arguments, str_or_none
from .turn import as_int


@dataclass(slots=True)
class _Call:
    id: str | None = None
    name: str | None = None
    args: list[str] = field(default_factory=list)


class ChatAssembler(Assembler):
    def __init__(self, api: ApiKind) -> None:
        super().__init__(api)
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._refusal: list[str] = []
        self._calls: list[_Call] = []
        self._by_index: dict[int, _Call] = {}

    def event(self, name: str | None, data: dict[str, Any]) -> None:
        if self.failed(data):
            return
        self._meta(data)
        choices = data.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            # n > 1 streams several choices interleaved; the history gets choice 0, as clients append it
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._delta(delta)
            if choice.get("finish_reason") is not None:
                self.stop_reason = str_or_none(choice["finish_reason"])

    def _meta(self, data: dict[str, Any]) -> None:
        self.model = str_or_none(data.get("model")) or self.model
        self.id = str_or_none(data.get("id")) or self.id
        usage = data.get("usage")
        if isinstance(usage, dict):
            self._usage(usage)

    def _usage(self, usage: dict[str, Any]) -> None:
        details = usage.get("prompt_tokens_details")
        cached = as_int(details.get("cached_tokens")) if isinstance(details, dict) else None
        if cached is None:
            cached = as_int(usage.get("prompt_cache_hit_tokens"))  # DeepSeek's name for it
        self.openai_usage(usage.get("prompt_tokens"), cached, usage.get("completion_tokens"))

    def _delta(self, delta: dict[str, Any]) -> None:
        reasoning = delta.get("reasoning_content")
        if not isinstance(reasoning, str):
            reasoning = delta.get("reasoning")
        for pieces, piece in ((self._content, delta.get("content")), (self._reasoning, reasoning),
                              (self._refusal, delta.get("refusal"))):
            if isinstance(piece, str):
                pieces.append(piece)
        tool_calls = delta.get("tool_calls")
        if isinstance(tool_calls, list):
            for tc in tool_calls:
                if isinstance(tc, dict):
                    self._tool_delta(tc)

    def _slot(self, tc: dict[str, Any]) -> _Call:
        index = tc.get("index")
        if isinstance(index, int):
            call = self._by_index.get(index)
            if call is None:
                call = self._by_index[index] = _Call()
                self._calls.append(call)
            return call
        # no index (some compatible servers): a new id starts a call, otherwise it continues the last
        tc_id = tc.get("id")
        for call in self._calls:
            if tc_id and call.id == tc_id:
                return call
        if tc_id or not self._calls:
            self._calls.append(_Call())
        return self._calls[-1]

    def _tool_delta(self, tc: dict[str, Any]) -> None:
        call = self._slot(tc)
        if call.id is None and isinstance(tc.get("id"), str):
            call.id = tc["id"]
        fn = tc.get("function")
        if not isinstance(fn, dict):
            return
        # the name comes once; servers that repeat it in every chunk must not get it doubled
        if call.name is None and isinstance(fn.get("name"), str):
            call.name = fn["name"]
        args = fn.get("arguments")
        if isinstance(args, str):
            call.args.append(args)
        elif isinstance(args, dict):
            call.args.append(orjson.dumps(args).decode())

    def done(self) -> None:
        self.complete = self.error is None

    def body(self, data: dict[str, Any]) -> None:
        choices = data.get("choices")
        if self.failed(data) or not isinstance(choices, list):
            return
        self._meta(data)
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            msg = choice.get("message")
            if isinstance(msg, dict):
                # the same path as the stream, so a streamed and a whole answer give the same message
                self._delta({**msg, "tool_calls": [{**tc, "index": i} for i, tc in enumerate(msg.get("tool_calls") or [])
                                                   if isinstance(tc, dict)]})
            self.stop_reason = str_or_none(choice.get("finish_reason"))
        self.complete = True

    def assemble(self) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
        text = "".join(self._content)
        calls = [(c, "".join(c.args)) for c in self._calls]
        message: dict[str, Any] = {"role": "assistant",
                                   "content": text if text or not (calls or self._refusal) else None}
        if calls:
            message["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": a}}
                                     for c, a in calls]
        if self._reasoning:
            message["reasoning_content"] = "".join(self._reasoning)
        if self._refusal:
            message["refusal"] = "".join(self._refusal)
        tool_calls = [{"id": c.id, "name": c.name, "input": parse_arguments(a)} for c, a in calls]
        return message, text, tool_calls
