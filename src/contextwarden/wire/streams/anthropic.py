"""Anthropic Messages: SSE events (message_start ... message_stop) or a whole ``message`` JSON body."""

from __future__ import annotations

from typing import Any

from contextwarden.models.base import ApiKind

from .assembler import Assembler, error_from, extend, parse_arguments, str_or_none
from .turn import USAGE_FIELDS, as_int, merge_usage

# a delta that arrives for a block we never saw start (a proxy dropped it) still gets a block to land in
_IMPLIED_BLOCK: dict[Any, dict[str, Any]] = {
    "text_delta": {"type": "text", "text": ""},
    "thinking_delta": {"type": "thinking", "thinking": "", "signature": ""},
    "input_json_delta": {"type": "tool_use", "input": {}},
}
# delta type -> (field it extends, key in the delta)
_STRING_DELTAS = {"text_delta": ("text", "text"), "thinking_delta": ("thinking", "thinking")}


class AnthropicAssembler(Assembler):
    def __init__(self, api: ApiKind) -> None:
        super().__init__(api)
        self._blocks: dict[int, dict[str, Any]] = {}
        self._pieces: dict[int, dict[str, list[str]]] = {}  # index -> field -> text pieces not yet joined
        self._json: dict[int, list[str]] = {}  # index -> partial_json pieces

    # -- streaming -------------------------------------------------------------------------

    def event(self, name: str | None, data: dict[str, Any]) -> None:
        kind = data.get("type") or name
        if kind == "content_block_delta":  # by far the most frequent: first
            self._delta(data)
        elif kind == "content_block_start":
            self._start(data)
        elif kind == "content_block_stop":
            index = data.get("index")
            if isinstance(index, int):
                self._finalize(index)
        elif kind == "message_start":
            self._message_start(data.get("message") or {})
        elif kind == "message_delta":
            self._message_delta(data)
        elif kind == "message_stop":
            self.complete = self.error is None
        elif kind == "error":
            self.set_error(error_from(data) or {"type": "error", "message": ""})
        # ping and event types newer than this reader: nothing to assemble (still counted by the tap)

    def _message_start(self, msg: dict[str, Any]) -> None:
        self.model = str_or_none(msg.get("model")) or self.model
        self.id = str_or_none(msg.get("id")) or self.id
        self._usage(msg.get("usage"), msg.get("context_management"))

    def _message_delta(self, data: dict[str, Any]) -> None:
        delta = data.get("delta") or {}
        if delta.get("stop_reason") is not None:
            self.stop_reason = str_or_none(delta["stop_reason"])
        if "stop_sequence" in delta:
            self.stop_sequence = str_or_none(delta["stop_sequence"])
        self._usage(data.get("usage"), data.get("context_management"))

    def _usage(self, usage: Any, managed: Any = None) -> None:
        if isinstance(usage, dict):
            self.usage = merge_usage(self.usage, **{k: usage.get(k) for k in USAGE_FIELDS})
            its = usage.get("iterations")
            if self.usage is not None and isinstance(its, list):  # (the latest: message_delta repeats totals)
                self.usage.iterations = [dict(i) for i in its if isinstance(i, dict)]
        edits = managed.get("applied_edits") if isinstance(managed, dict) else None
        if self.usage is not None and isinstance(edits, list):  # what the provider's context editing cleared
            self.usage.provider_cleared_tokens = sum(as_int(e.get("cleared_input_tokens")) or 0
                                                     for e in edits if isinstance(e, dict))

    def _start(self, data: dict[str, Any]) -> None:
        block = data.get("content_block")
        if not isinstance(block, dict):
            return
        index = data.get("index")
        if not isinstance(index, int):
            index = max(self._blocks, default=-1) + 1
        # copies: the event dict also goes to cw_response_event hooks, which must not see it grow
        block = dict(block)
        if isinstance(block.get("citations"), list):
            block["citations"] = list(block["citations"])
        self._blocks[index] = block
        self._pieces.pop(index, None)
        self._json.pop(index, None)

    def _delta(self, data: dict[str, Any]) -> None:
        index, delta = data.get("index"), data.get("delta")
        if not isinstance(index, int) or not isinstance(delta, dict):
            return
        dtype = delta.get("type")
        block = self._blocks.get(index)
        if block is None:
            implied = _IMPLIED_BLOCK.get(dtype)
            if implied is None:
                return
            block = self._blocks[index] = dict(implied)
        if dtype in _STRING_DELTAS:
            fname, key = _STRING_DELTAS[dtype]
            piece = delta.get(key)
            if isinstance(piece, str):
                self._pieces.setdefault(index, {}).setdefault(fname, []).append(piece)
        elif dtype == "input_json_delta":
            piece = delta.get("partial_json")
            if isinstance(piece, str):
                self._json.setdefault(index, []).append(piece)
        elif dtype == "signature_delta":
            block["signature"] = delta.get("signature")
        elif dtype == "compaction_delta":  # the summary whole (not a piece), and its opaque part
            block.update((k, delta[k]) for k in ("content", "encrypted_content") if k in delta)
        elif dtype == "citations_delta":
            citations = block.get("citations")
            if not isinstance(citations, list):
                citations = block["citations"] = []
            citations.append(delta.get("citation"))
        # unknown delta types: the block keeps what content_block_start gave it

    def _finalize(self, index: int) -> None:
        """Join a block's pieces into it (at content_block_stop, or at the end for unclosed blocks)."""
        block = self._blocks.get(index)
        pieces = self._pieces.pop(index, None)
        partial = self._json.pop(index, None)
        if block is None:
            return
        for fname, parts in (pieces or {}).items():
            extend(block, fname, parts)
        if partial is not None:
            raw = "".join(partial)
            if raw.strip():  # no input pieces (a tool without parameters): keep the start's {}
                block["input"] = parse_arguments(raw)

    # -- whole body ------------------------------------------------------------------------

    def body(self, data: dict[str, Any]) -> None:
        content = data.get("content")
        if self.failed(data) or not isinstance(content, list):
            return
        self._message_start(data)
        self.stop_reason = str_or_none(data.get("stop_reason"))
        self.stop_sequence = str_or_none(data.get("stop_sequence"))
        self._blocks = {i: dict(b) if isinstance(b, dict) else b for i, b in enumerate(content)}
        self.complete = True

    # -- result ----------------------------------------------------------------------------

    def assemble(self) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
        for index in list(self._pieces) + list(self._json):
            self._finalize(index)
        blocks = [self._blocks[i] for i in sorted(self._blocks)]
        text = "".join(b["text"] for b in blocks
                       if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str))
        # only client tools: server_tool_use / mcp_tool_use ran at Anthropic and need no tool_result
        tool_calls = [{"id": b.get("id"), "name": b.get("name"), "input": b.get("input")}
                      for b in blocks if isinstance(b, dict) and b.get("type") == "tool_use"]
        return {"role": "assistant", "content": blocks}, text, tool_calls
