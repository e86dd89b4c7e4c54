"""One class per API dialect: what differs between the APIs the proxy understands, in one place each
(:class:`~.base.Dialect` says what a dialect has). One instance per API, looked up with :func:`dialect`;
a new API is one new module here and a line in :data:`DIALECTS`."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from ...models.base import ApiKind
from .anthropic import Anthropic
from .base import (
    NO_PROVIDER,
    Dialect,
    NotInjectable,
    ProviderContext,
    history_dicts,
    last_index,
    last_user_index,
    path_of,
    rewrite_parts,
    taking_over,
)
from .ollama import Ollama
from .openai_chat import Chat
from .responses import Responses

ANTHROPIC, OPENAI_CHAT, OPENAI_RESPONSES, OLLAMA_CHAT = Anthropic(), Chat(), Responses(), Ollama()
# in the order a request's path is matched
DIALECTS = MappingProxyType({d.kind: d for d in (ANTHROPIC, OPENAI_CHAT, OPENAI_RESPONSES, OLLAMA_CHAT)})

__all__ = ["ANTHROPIC", "DIALECTS", "NO_PROVIDER", "OLLAMA_CHAT", "OPENAI_CHAT", "OPENAI_RESPONSES", "Dialect",
           "NotInjectable", "ProviderContext", "dialect", "history_dicts", "last_index", "last_user_index", "path_of",
           "rewrite_parts", "taking_over", "validate_rewrite"]


def dialect(api: ApiKind | str | Dialect) -> Dialect:
    """The dialect of ``api`` (a dialect is its own)."""
    return api if isinstance(api, Dialect) else DIALECTS[ApiKind(api)]


def validate_rewrite(api: ApiKind | str | Dialect, new: Any, original: Any, *args: Any, **kw: Any) -> list[str]:
    """:meth:`Dialect.validate` of ``api``'s dialect (a problem for an API that is not one)."""
    try:
        d = dialect(api)
    except ValueError:
        return [f"unknown api {api!r}"]
    return d.validate(new, original, *args, **kw)
