"""OpenAI Responses: typed SSE events (``response.*``) or a whole ``response`` JSON body.

``response.completed`` carries the whole response, so its ``output`` is taken as is; the deltas are
assembled only so that a stream cut short (or a server that sends an empty final output) still yields
what was said.
"""

from __future__ import annotations

from typing import Any

from contextwarden.models.base import ApiKind

from .assembler import Assembler, error_from, extend, parse_arguments, str_or_none

_TERMINAL = {"completed", "incomplete", "failed", "cancelled"}
# item type -> the string field its argument deltas extend
_ITEM_STREAMED_FIELD = {"function_call": "arguments", "custom_tool_call": "input"}


class ResponsesAssembler(Assembler):
    def __init__(self, api: ApiKind) -> None:
        super().__init__(api)
        self._final: list[Any] | None = None  # output of response.completed / incomplete / the body
        self._items: dict[int, dict[str, Any]] = {}  # output_index -> item
        self._done: set[int] = set()  # items whose output_item.done gave the full item
        self._parts: dict[int, dict[int, dict[str, Any]]] = {}  # output_index -> content_index -> part
        self._part_pieces: dict[tuple[int, int], list[str]] = {}
        self._item_pieces: dict[int, list[str]] = {}

    def event(self, name: str | None, data: dict[str, Any]) -> None:
        kind = data.get("type") or name
        if not isinstance(kind, str):
            return
        oi = data.get("output_index")
        if kind in ("response.output_text.delta", "response.refusal.delta"):
            self._part_piece(oi, data.get("content_index", 0), data.get("delta"), reset=False)
        elif kind in ("response.function_call_arguments.delta", "response.custom_tool_call_input.delta"):
            self._item_piece(oi, data.get("delta"), kind, reset=False)
        elif kind == "response.output_item.added":
            item = data.get("item")
            if isinstance(oi, int) and isinstance(item, dict):
                self._items[oi] = dict(item)
        elif kind == "response.content_part.added":
            part, ci = data.get("part"), data.get("content_index", 0)
            if isinstance(oi, int) and isinstance(ci, int) and isinstance(part, dict):
                self._item(oi, "message")
                part = dict(part)  # copies: we extend them, and hooks see the event dicts
                if isinstance(part.get("annotations"), list):
                    part["annotations"] = list(part["annotations"])
                self._parts.setdefault(oi, {})[ci] = part
        elif kind in ("response.output_text.done", "response.refusal.done"):
            whole = data.get("text" if kind == "response.output_text.done" else "refusal")
            self._part_piece(oi, data.get("content_index", 0), whole, reset=True)
        elif kind in ("response.function_call_arguments.done", "response.custom_tool_call_input.done"):
            whole = data.get("arguments" if kind == "response.function_call_arguments.done" else "input")
            self._item_piece(oi, whole, kind, reset=True)
        elif kind == "response.output_text.annotation.added":
            part = self._part(oi, data.get("content_index", 0))
            if part is not None:
                annotations = part.get("annotations")
                if not isinstance(annotations, list):
                    annotations = part["annotations"] = []
                annotations.append(data.get("annotation"))
        elif kind == "response.output_item.done":
            item = data.get("item")
            if isinstance(oi, int) and isinstance(item, dict):
                self._items[oi] = item
                self._done.add(oi)
        elif kind in ("response.created", "response.in_progress", "response.queued",
                      "response.completed", "response.incomplete", "response.failed"):
            response = data.get("response")
            if isinstance(response, dict):
                self._response(response)
            if kind in ("response.completed", "response.incomplete"):
                self.complete = self.error is None
            elif kind == "response.failed":
                self.set_error(error_from({"error": response.get("error") if isinstance(response, dict) else None})
                               or {"type": "failed", "message": ""})
        elif kind == "error":
            self.set_error(error_from(data) or {"type": "error", "message": ""})
        # reasoning summary deltas and others: the full item arrives in output_item.done

    # -- pieces of items and content parts -------------------------------------------------

    def _item(self, oi: int, kind: str) -> dict[str, Any]:
        item = self._items.get(oi)
        if item is None:  # a delta whose output_item.added we never saw
            item = self._items[oi] = {"type": kind, "role": "assistant", "content": []} if kind == "message" \
                else {"type": kind}
        return item

    def _part(self, oi: Any, ci: Any) -> dict[str, Any] | None:
        if not isinstance(oi, int) or not isinstance(ci, int) or oi in self._done:
            return None
        self._item(oi, "message")
        parts = self._parts.setdefault(oi, {})
        part = parts.get(ci)
        if part is None:
            part = parts[ci] = {"type": "output_text", "text": "", "annotations": []}
        return part

    def _part_piece(self, oi: Any, ci: Any, piece: Any, reset: bool) -> None:
        part = self._part(oi, ci)
        if part is None or not isinstance(piece, str):
            return
        if reset:  # a *.done event repeats the whole text: it replaces the pieces
            part["refusal" if part.get("type") == "refusal" else "text"] = ""
            self._part_pieces[(oi, ci)] = [piece]
        else:
            self._part_pieces.setdefault((oi, ci), []).append(piece)

    def _item_piece(self, oi: Any, piece: Any, kind: str, reset: bool) -> None:
        if not isinstance(oi, int) or oi in self._done or not isinstance(piece, str):
            return
        item = self._item(oi, "custom_tool_call" if "custom_tool_call" in kind else "function_call")
        if reset:
            item[_ITEM_STREAMED_FIELD.get(str(item.get("type")), "arguments")] = ""
            self._item_pieces[oi] = [piece]
        else:
            self._item_pieces.setdefault(oi, []).append(piece)

    # -- the response object ---------------------------------------------------------------

    def _response(self, r: dict[str, Any]) -> None:
        self.model = str_or_none(r.get("model")) or self.model
        self.id = str_or_none(r.get("id")) or self.id
        output = r.get("output")
        if isinstance(output, list) and output:
            self._final = output
        status = r.get("status")
        if status in _TERMINAL:
            details = r.get("incomplete_details")
            reason = details.get("reason") if isinstance(details, dict) else None
            self.stop_reason = str_or_none(reason) or status
        usage = r.get("usage")
        if isinstance(usage, dict):
            details = usage.get("input_tokens_details")
            cached = details.get("cached_tokens") if isinstance(details, dict) else None
            self.openai_usage(usage.get("input_tokens"), cached, usage.get("output_tokens"))

    def body(self, data: dict[str, Any]) -> None:
        err = error_from(data)
        if isinstance(data.get("output"), list) or data.get("object") == "response":
            self._response(data)
            self.complete = err is None
        if err is not None:
            self.set_error(err)

    # -- result ----------------------------------------------------------------------------

    def _streamed_output(self) -> list[Any]:
        out = []
        for oi in sorted(self._items):
            item = self._items[oi]
            if oi not in self._done:
                item = dict(item)
                parts = self._parts.get(oi)
                if parts:
                    content = []
                    for ci in sorted(parts):
                        part = dict(parts[ci])
                        extend(part, "refusal" if part.get("type") == "refusal" else "text", self._part_pieces.get((oi, ci), ()))
                        content.append(part)
                    item["content"] = content
                if oi in self._item_pieces:
                    extend(item, _ITEM_STREAMED_FIELD.get(str(item.get("type")), "arguments"), self._item_pieces[oi])
            out.append(item)
        return out

    def assemble(self) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
        output = self._final if self._final is not None else self._streamed_output()
        texts: list[str] = []
        tool_calls: list[dict[str, Any]] = []
        for item in output:
            if not isinstance(item, dict):
                continue
            itype = item.get("type")
            if itype == "message":
                for part in item.get("content") or ():
                    if isinstance(part, dict) and part.get("type") == "output_text" and isinstance(part.get("text"), str):
                        texts.append(part["text"])
            elif itype in _ITEM_STREAMED_FIELD:
                raw = item.get(_ITEM_STREAMED_FIELD[itype])
                tool_calls.append({"id": item.get("call_id") or item.get("id"), "name": item.get("name"),
                                   "input": parse_arguments(raw) if itype == "function_call" else raw})
        return {"role": "assistant", "output": output}, "".join(texts), tool_calls
