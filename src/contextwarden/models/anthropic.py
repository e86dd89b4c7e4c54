"""Anthropic Messages API request body (``POST /v1/messages``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

import orjson
from pydantic import Discriminator, Tag, field_validator

from .base import REQUEST_CONFIG, UnknownBlock, WireModel, frozen_list


class TextBlock(WireModel):
    type: str = "text"
    text: str = ""


class ImageBlock(WireModel):
    type: str = "image"
    source: dict[str, Any] | None = None


class ThinkingBlock(WireModel):
    type: str = "thinking"
    thinking: str = ""
    signature: str | None = None


class RedactedThinkingBlock(WireModel):
    type: str = "redacted_thinking"
    data: str = ""


class ToolUseBlock(WireModel):
    type: str = "tool_use"
    id: str = ""
    name: str = ""
    input: Any = None


class ToolResultBlock(WireModel):
    type: str = "tool_result"
    tool_use_id: str = ""
    # a string, or a list of text/image/... blocks; kept as-is
    content: Any = None
    is_error: bool | None = None


_BLOCK_TAGS = frozenset({"text", "image", "thinking", "redacted_thinking", "tool_use", "tool_result"})


def _block_tag(v: Any) -> str:
    t = v.get("type") if isinstance(v, dict) else getattr(v, "type", None)
    return t if t in _BLOCK_TAGS else "unknown"


Block = Annotated[
    Annotated[TextBlock, Tag("text")] | Annotated[ImageBlock, Tag("image")] | Annotated[ThinkingBlock, Tag("thinking")] | Annotated[RedactedThinkingBlock, Tag("redacted_thinking")] | Annotated[ToolUseBlock, Tag("tool_use")] | Annotated[ToolResultBlock, Tag("tool_result")] | Annotated[UnknownBlock, Tag("unknown")],
    Discriminator(_block_tag),
]


class Message(WireModel):
    # any string: "user", "assistant", and since 2026 "system" mid-conversation, or whatever comes next
    role: str
    content: str | list[Block]

    _frozen = field_validator("content")(classmethod(lambda cls, v: frozen_list(v)))

    def blocks(self) -> Sequence[WireModel]:
        """Content as a list of blocks (a string content reads as one text block, not written back)."""
        if isinstance(self.content, str):
            return [TextBlock(type="text", text=self.content)]
        return self.content


class MessagesRequest(WireModel):
    model_config = REQUEST_CONFIG
    model: str | None = None
    messages: list[Message] = []
    # system and tools are never rewritten by built-in stages: they are the cached prefix
    system: Any = None
    tools: Any = None
    stream: bool | None = None
    metadata: dict[str, Any] | None = None
    max_tokens: int | None = None


# by exact block type (pydantic's isinstance is slow, and this runs for every block of the history on
# every request); any other block has no text
_BLOCK_TEXT: dict[type, Callable[[Any], str]] = {
    TextBlock: lambda b: b.text,
    ThinkingBlock: lambda b: b.thinking,
    ToolUseBlock: lambda b: f"{b.name} " + orjson.dumps(b.input).decode("utf-8", "replace"),
    ToolResultBlock: lambda b: content_text(b.content),
}


def block_text(block: WireModel) -> str:
    """Plain text of a block for tagging, token counting and memory (not for the wire)."""
    f = _BLOCK_TEXT.get(type(block))
    return f(block) if f is not None else ""


def content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [(str(b.get("text", "")) if b.get("type") == "text" else "") if isinstance(b, dict)
                 else block_text(b) if isinstance(b, WireModel) else "" for b in content]
        return "\n".join(p for p in parts if p)
    return str(content)


def message_text(msg: Message) -> str:
    """A message's plain text (the dialect's ``text_of``: what strip cleans)."""
    if isinstance(msg.content, str):
        return msg.content
    return "\n".join(t for t in map(block_text, msg.content) if t)
