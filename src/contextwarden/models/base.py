from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict


class ApiKind(str, enum.Enum):
    ANTHROPIC = "anthropic"
    OPENAI_CHAT = "openai_chat"
    OPENAI_RESPONSES = "openai_responses"
    OLLAMA_CHAT = "ollama_chat"  # Ollama's native /api/chat: OpenAI-chat-shaped messages


class FrozenList(list):
    """The list of a typed message's blocks (or tool calls): read like a list, never changed in place.

    Typed messages are shared between the requests of a conversation (and their threads), so a stage
    that appended to one would change a message another request is reading. Build a new list and a
    new message instead (``msg.model_copy(update={"content": [...]})``)."""

    __slots__ = ()

    def _frozen(self, *a, **k):
        raise TypeError("a typed message's list is frozen: build a new message with model_copy(update=...) "
                        "and put it in the request's message list (see hookspecs.cw_request)")

    def __reduce__(self):  # (copy and pickle rebuild a list by appending to it)
        return (FrozenList, (list(self),))

    append = extend = insert = remove = pop = clear = sort = reverse = _frozen
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _frozen


def frozen_list(v: Any) -> Any:
    """``v`` as a FrozenList when it is a list (a field validator of typed lists)."""
    return FrozenList(v) if type(v) is list else v


class WireModel(BaseModel):
    """Base of every wire model: unknown fields are kept and dumped back in place.

    Frozen: a typed message or block is never changed after it was parsed or built; a stage makes an
    edited copy (``model_copy(update=...)``) and puts it in the request in the original's place. The
    request body models (``MessagesRequest``...) are not frozen: they belong to one request."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, protected_namespaces=(), frozen=True)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        if update:  # the typed lists of a copy are frozen too (model_copy does not run validators)
            update = {k: FrozenList(v) if type(v) is list and k in _TYPED_LISTS else v for k, v in update.items()}
        return super().model_copy(update=update, deep=deep)

    def wire(self) -> dict[str, Any]:
        # exclude_unset: a field the client did not send is never added (no defaults leak out).
        return self.model_dump(mode="json", exclude_unset=True, by_alias=True)


_TYPED_LISTS = frozenset({"content", "tool_calls"})

#: the config of a request body model: one request's own, assigned to by stages (``req.messages = ...``)
REQUEST_CONFIG = ConfigDict(extra="allow", populate_by_name=True, protected_namespaces=(), frozen=False)


class UnknownBlock(WireModel):
    """A content block whose type we do not know; kept verbatim."""

    type: str = "unknown"
