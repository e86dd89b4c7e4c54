"""What contextwarden keeps on a flow (``flow.metadata["contextwarden"]``) between its hooks."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from .models.base import ApiKind

# on a flow the engine reads after mitmdump already forwarded it (``addons/enginelink.py``): it is observed,
# whatever the settings say by the time it is read
FORWARDED = "contextwarden_forwarded"


def bypass_asked(value: str | None) -> bool:
    """Whether an ``x-contextwarden-bypass`` header's value asks for the request to pass unchanged."""
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off")


@dataclass
class FlowState:
    api: ApiKind
    t_request: float
    # resolves to the RequestContext (or None when the body could not be handled); in observe-only
    # mode it is still being built on a worker thread while the request is in flight
    ctx_future: asyncio.Future[Any] | None = None
    tap: Any = None  # contextwarden.streams.ResponseTap while a response streams
    rewritten: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)
