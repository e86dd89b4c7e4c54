"""What the reader hands on: the provider's usage and the assembled assistant turn."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from contextwarden.models.base import ApiKind

USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def as_int(value: Any) -> int | None:
    """A token count, or None: providers send null, omit fields, and bool is an int in Python."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass
class Usage:
    """Token usage as the provider reported it, in Anthropic's meaning.

    ``input_tokens`` does NOT include cache reads or writes (OpenAI's ``prompt_tokens`` does, so the
    OpenAI readers subtract the cached part); ``total_input`` is the provider's true prompt size.
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    # the provider's own context management (Anthropic): ``usage.iterations`` as reported (its
    # ``compaction`` entries are billed on top of the fields above: cost.provider_compaction), and the
    # input tokens its context edits cleared (``context_management.applied_edits``: not the proxy's savings)
    iterations: list[dict[str, Any]] | None = None
    provider_cleared_tokens: int | None = None

    @property
    def total_input(self) -> int | None:
        parts = (self.input_tokens, self.cache_read_input_tokens, self.cache_creation_input_tokens)
        if all(p is None for p in parts):
            return None
        return sum(p or 0 for p in parts)

    def to_dict(self) -> dict[str, Any]:
        """The four counts, and the provider's own context management when reported."""
        return {k: v for k, v in asdict(self).items() if k in USAGE_FIELDS or v is not None}


def merge_usage(current: Usage | None, **values: Any) -> Usage | None:
    """Take the latest non-null values: later events (Anthropic's message_delta, a final OpenAI chunk)
    repeat cumulative totals, and may omit a field whose earlier value must survive."""
    ints = {k: as_int(v) for k, v in values.items()}
    if all(v is None for v in ints.values()):
        return current
    usage = current if current is not None else Usage()
    for k, v in ints.items():
        if v is not None:
            setattr(usage, k, v)
    return usage


@dataclass
class AssembledTurn:
    """The assistant's turn, put together from a streamed or whole response.

    ``message`` is in the API's native shape, ready to append to the conversation history:
    Anthropic ``{"role": "assistant", "content": [blocks]}`` (blocks as the non-streaming API returns
    them); OpenAI chat ``{"role", "content": str | None, "tool_calls"?: [...], "reasoning_content"?}``;
    Ollama's native chat ``{"role", "content": str, "thinking"?, "tool_calls"?}`` (tool calls as Ollama
    sends them, arguments an object); Responses ``{"role": "assistant", "output": [items]}``.
    """

    api: ApiKind
    model: str | None
    message: dict[str, Any]
    text: str
    tool_calls: list[dict[str, Any]]  # [{"id", "name", "input"}], input parsed from JSON when possible
    usage: Usage | None
    stop_reason: str | None
    error: dict[str, Any] | None
    complete: bool
    events: int
    id: str | None = None  # the provider's message / response id (Responses: previous_response_id)
    stop_sequence: str | None = None
    skipped: int = 0  # events that could not be parsed or did not fit the API's shapes

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest for the event log."""
        return {
            "model": self.model,
            "stop_reason": self.stop_reason,
            "usage": self.usage.to_dict() if self.usage is not None else None,
            "text_chars": len(self.text),
            "tool_calls": [tc.get("name") for tc in self.tool_calls],
            "error": self.error,
            "complete": self.complete,
            "events": self.events,
        }
