from __future__ import annotations

import enum
import threading
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict


class ApiKind(str, enum.Enum):
    ANTHROPIC = "anthropic"
    OPENAI_CHAT = "openai_chat"
    OPENAI_RESPONSES = "openai_responses"
    OLLAMA_CHAT = "ollama_chat"  # Ollama's native /api/chat: OpenAI-chat-shaped messages


# Set in an instance's __dict__ by any attribute write after it was built (not a field: never dumped).
_TOUCHED = "__cw_touched__"
# How many writes there have been to typed messages and what they hold (any instance, any thread): a
# lender that sees it unchanged knows none of its messages was written (typedpool.Lease). Writes to a
# request's own fields (``req.messages = ...``) set its flag but do not count.
touches = [0]
_touch_lock = threading.Lock()
_ROOTS: set[type] = set()  # request body models (models/__init__.py registers them)


def _bump() -> None:
    with _touch_lock:
        touches[0] += 1


def _touch(obj: "WireModel") -> None:
    obj.__dict__[_TOUCHED] = True  # the flag first, then the count: a reader of the count sees the flag
    if type(obj) not in _ROOTS:
        _bump()


def touched(obj: "WireModel") -> bool:
    """Whether anything was assigned to (or deleted from) ``obj`` since pydantic built it."""
    return _TOUCHED in obj.__dict__


class TrackedList(list):
    """The list of a typed message's blocks (or tool calls): changing it in place is seen like an
    attribute write (``touched_list``), so a message whose blocks were appended to or replaced is not
    taken for the one the client sent."""

    __slots__ = ("_cw_touched",)

    def _mark(self) -> None:
        self._cw_touched = True
        _bump()

    def append(self, x): self._mark(); super().append(x)  # noqa: E301,E704
    def extend(self, x): self._mark(); super().extend(x)  # noqa: E301,E704
    def insert(self, i, x): self._mark(); super().insert(i, x)  # noqa: E301,E704
    def remove(self, x): self._mark(); super().remove(x)  # noqa: E301,E704
    def pop(self, *a): self._mark(); return super().pop(*a)  # noqa: E301,E704
    def clear(self): self._mark(); super().clear()  # noqa: E301,E704
    def sort(self, **k): self._mark(); super().sort(**k)  # noqa: E301,E704
    def reverse(self): self._mark(); super().reverse()  # noqa: E301,E704
    def __setitem__(self, i, x): self._mark(); super().__setitem__(i, x)  # noqa: E301,E704
    def __delitem__(self, i): self._mark(); super().__delitem__(i)  # noqa: E301,E704

    def __iadd__(self, x):
        self._mark()
        return super().__iadd__(x)

    def __imul__(self, n):
        self._mark()
        return super().__imul__(n)


def touched_list(lst: list) -> bool:
    return getattr(lst, "_cw_touched", False)


def tracked(v: Any) -> Any:
    """``v`` as a TrackedList when it is a list (a field validator of typed lists)."""
    return TrackedList(v) if type(v) is list else v


class WireModel(BaseModel):
    """Base of every wire model: unknown fields are kept and dumped back in place.

    Attribute writes mark the instance touched: the pipeline lends typed messages from one request to
    the next (:mod:`contextwarden.typedpool`) and takes back only those no stage changed."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, protected_namespaces=())

    def __setattr__(self, name: str, value: Any) -> None:
        _touch(self)
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        _touch(self)
        super().__delattr__(name)

    def wire(self) -> dict[str, Any]:
        # exclude_unset: a field the client did not send is never added (no defaults leak out).
        return self.model_dump(mode="json", exclude_unset=True, by_alias=True)


class UnknownBlock(WireModel):
    """A content block whose type we do not know; kept verbatim."""

    type: str = "unknown"


def dump_body(model: WireModel) -> bytes:
    return orjson.dumps(model.wire())
