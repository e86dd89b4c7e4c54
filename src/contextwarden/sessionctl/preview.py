"""The decided state of a session's request under other controls, without changing any state.

Runs the pipeline's re-apply path (:meth:`contextwarden.request.pipeline.Pipeline.decided`: every stage's stored
records, put in through the stages' own ``cw_reapply``, nothing decided) with the session's controls
replaced for this thread only (:class:`~contextwarden.sessionctl.ledger.override`). Nothing it does is
stored: no decision (re-apply decides nothing), no version, no body for the inspector (the call counts
as abandoned), no event (they are held and dropped).

Used for a rollback's cost and fit (the session's latest request under the rolled-back controls) and for
``/v1/messages/count_tokens`` (the request as the proxy would send it).
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from typing import Any

import orjson

from ..request import pipeline
from .ledger import last_request, override


def latest(runtime, key: str):
    """The session's latest live request as a context to preview with: its body read back from the
    runtime's recent bodies (None when the session had no request since the proxy started, or its
    body was evicted)."""
    lite = last_request(runtime, key)
    if lite is None:
        return None
    entry = runtime.bodies.get(lite.flow_id)
    body = entry.get("original") if entry else None
    if not isinstance(body, dict):
        return None
    return dataclasses.replace(lite, original=body)


def decided_state(runtime, ctx, record: dict[str, Any] | None = None, key: str = "") -> tuple[bytes | None, int | None]:
    """:func:`~contextwarden.request.pipeline.decided_state` of ``ctx``'s request; under ``record`` as the
    session's controls when given."""
    with override(key, record) if record is not None else nullcontext():
        return pipeline.decided_state(runtime, ctx)


def decided_body(runtime, ctx, record: dict[str, Any] | None = None, key: str = "") -> tuple[dict[str, Any], int | None]:
    """:func:`decided_state` with the body decoded (the client's own when nothing applies)."""
    body, tokens = decided_state(runtime, ctx, record, key)
    return (orjson.loads(body) if body is not None else ctx.original), tokens
