from __future__ import annotations

import enum
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict


class ApiKind(str, enum.Enum):
    ANTHROPIC = "anthropic"
    OPENAI_CHAT = "openai_chat"
    OPENAI_RESPONSES = "openai_responses"
    OLLAMA_CHAT = "ollama_chat"  # Ollama's native /api/chat: OpenAI-chat-shaped messages


class WireModel(BaseModel):
    """Base of every wire model: unknown fields are kept and dumped back in place."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, protected_namespaces=())

    def wire(self) -> dict[str, Any]:
        # exclude_unset: a field the client did not send is never added (no defaults leak out).
        return self.model_dump(mode="json", exclude_unset=True, by_alias=True)


class UnknownBlock(WireModel):
    """A content block whose type we do not know; kept verbatim."""

    type: str = "unknown"


def dump_body(model: WireModel) -> bytes:
    return orjson.dumps(model.wire())
