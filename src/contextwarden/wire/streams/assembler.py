"""The part every API's assembler shares: the turn's common state and the provider error shapes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from contextwarden.models.base import ApiKind

from .turn import AssembledTurn, Usage, as_int, merge_usage


def error_from(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The error an event or body carries, as ``{"type", "message"}`` (+ ``code`` when given), else None.

    Shapes: Anthropic ``{"type": "error", "error": {"type", "message"}}``; OpenAI
    ``{"error": {"message", "type", "code"}}``; Ollama ``{"error": "text"}``; the Responses ``error``
    event ``{"type": "error", "code", "message"}``. A null ``error`` (Responses bodies carry one) is no error.
    """
    inner = obj.get("error")
    if inner is None and obj.get("type") == "error":
        inner = obj  # the Responses error event puts code/message at the top level
    if not inner:
        return None
    if isinstance(inner, str):
        return {"type": "error", "message": inner}
    if not isinstance(inner, dict):
        return {"type": "error", "message": str(inner)}
    etype = inner.get("type") if inner is not obj else None
    code = inner.get("code")
    err: dict[str, Any] = {"type": str(etype or code or "error"), "message": str(inner.get("message") or "")}
    if code is not None:
        err["code"] = code
    return err


def parse_arguments(raw: Any) -> Any:
    """A tool call's input: parsed JSON when it parses, else the raw string (a truncated stream, a
    model that wrote invalid JSON). Empty means no arguments, as Anthropic's non-streaming ``{}``."""
    if not isinstance(raw, str):
        return raw
    if not raw.strip():
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw


class Assembler:
    """Collects one API's events into an :class:`AssembledTurn`.

    ``event`` takes a streamed event (SSE data or NDJSON line), ``body`` a whole JSON response and
    ``done`` the ``[DONE]`` sentinel. Text arrives as many small pieces, so pieces are kept in lists and
    joined once in ``build`` (string ``+=`` on dict values is quadratic).
    """

    def __init__(self, api: ApiKind) -> None:
        self.api = api  # (what its dialect is: Dialect.new_assembler)
        self.model: str | None = None
        self.id: str | None = None
        self.usage: Usage | None = None
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.error: dict[str, Any] | None = None
        self.complete = False

    def event(self, name: str | None, data: dict[str, Any]) -> None:
        raise NotImplementedError

    def body(self, data: dict[str, Any]) -> None:
        raise NotImplementedError

    def done(self) -> None:
        """The ``data: [DONE]`` sentinel; only OpenAI Chat Completions ends a stream with it."""

    def set_error(self, err: dict[str, Any]) -> None:
        self.error = err
        self.complete = False

    def failed(self, data: dict[str, Any]) -> bool:
        """Whether ``data`` is an error (then set as the turn's)."""
        err = error_from(data)
        if err is not None:
            self.set_error(err)
        return err is not None

    def openai_usage(self, total: Any, cached: Any, output: Any) -> None:
        """OpenAI's usage (chat and Responses): its ``total`` input tokens include the ``cached`` ones;
        Usage.input_tokens does not (Anthropic's meaning)."""
        total, cached = as_int(total), as_int(cached) or 0
        known = total is not None
        self.usage = merge_usage(self.usage, input_tokens=total - cached if known else None, output_tokens=output,
                                 cache_read_input_tokens=cached if known else None,
                                 cache_creation_input_tokens=0 if known else None)

    def assemble(self) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
        """The message in native shape, its visible text, and the normalised tool calls."""
        raise NotImplementedError

    def build(self) -> AssembledTurn:
        message, text, tool_calls = self.assemble()
        return AssembledTurn(
            api=self.api, model=self.model, message=message, text=text, tool_calls=tool_calls,
            usage=self.usage, stop_reason=self.stop_reason, error=self.error,
            complete=self.complete and self.error is None, events=0, id=self.id, stop_sequence=self.stop_sequence,
        )


def str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def extend(obj: dict[str, Any], field: str, pieces: Iterable[str]) -> None:
    """``obj[field]`` (a string, else nothing) with the streamed ``pieces`` after it."""
    prefix = obj.get(field)
    obj[field] = (prefix if isinstance(prefix, str) else "") + "".join(pieces)
