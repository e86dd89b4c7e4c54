"""Driving the real pipeline in-process: what the evaluations and memory tests replay conversations with.

A :class:`Replayer` owns a :class:`~contextwarden.core.runtime.Runtime` (a temporary ``cw_home`` and a
profile) and sends request bodies through the proxy's one lifecycle (``lifecycle.send``, which is
``lifecycle.run``), returning the body that would go upstream; :meth:`Replayer.complete` then plays
the assistant's reply as an assembled turn through ``lifecycle.complete`` (the ``cw_turn_complete``
hooks: ingestion).

With a ``clock`` (the evaluations) each request is stamped with a time of its own, ``TICK_S`` after the
previous one, as a trace replay stamps its requests with the trace's times: the time-based rules
(compaction's cache-lifetime cost model, clearing's expired prefix) then read the same times on every run,
however long the machine took between two requests (a slow flush on a loaded machine used to turn a warm
prefix cold and compact at the soft threshold in one run and not in the next).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ...core.runtime import Runtime
from ...memory.service import get_service
from ...models.base import ApiKind
from ...request import lifecycle
from ...request.pipeline import Outcome
from ...wire.dialects import ANTHROPIC, Dialect, dialect

_flow_ids = itertools.count(1)
TICK_S = 1.0  # a clocked replay's requests come this far apart: well within the prompt cache's lifetime


@dataclass
class Sent:
    """One replayed request: what went upstream and what the stages said."""

    ctx: Any  # RequestContext
    outcome: Outcome
    wire: dict[str, Any]  # the body sent upstream (the original when nothing changed)

    @property
    def changed(self) -> bool:
        return self.outcome.body is not None

    def tokens(self) -> int:
        return (self.ctx.tokens_out if self.changed else self.ctx.tokens_in) or 0


class Replayer:
    """Sends bodies through the request lifecycle (lifecycle.py) of a real runtime."""

    def __init__(self, runtime, api: ApiKind | Dialect = ANTHROPIC, clock: float | None = None) -> None:
        self.runtime = runtime
        self.api = dialect(api).kind
        self.loop = asyncio.new_event_loop()
        self.clock = clock  # the last request's time (None: requests happen at the wall clock's)

    @classmethod
    def from_profile(cls, profile: str | os.PathLike, home: str | os.PathLike, api: ApiKind | Dialect = ANTHROPIC,
                     log: bool = False, clock: float | None = None) -> Replayer:
        return cls(Runtime.from_profile(profile, Path(home), log=log), api, clock)

    def memory(self):
        """The runtime's memory service (ready), or None."""
        svc = get_service(self.runtime)
        if svc is not None:
            svc.wait_ready(120)
        return svc

    def body(self, messages: list[dict], model: str = "claude-eval", **kw) -> dict[str, Any]:
        return dialect(self.api).body(messages, model, **kw)

    def send(self, messages: list[dict] | None = None, *, api_key: str = "sk-eval", session: str | None = None,
             body: dict[str, Any] | None = None, headers: list[tuple[str, str]] | None = None,
             tenant: str | None = None) -> Sent:
        """One request through the pipeline, as the interceptor runs it (``tenant`` overrides the one
        derived from the key: benchmarks use stores built for named tenants)."""
        body = body if body is not None else self.body(messages or [])
        raw = orjson.dumps(body)
        h = [("content-type", "application/json"), dialect(self.api).auth_header(api_key)]
        if session:
            h.append(("x-contextwarden-session", session))
        h += headers or []
        host, path = dialect(self.api).endpoint
        notes: dict[str, Any] = {}
        if self.clock is not None:
            self.clock += TICK_S
            notes["replay"] = {"ts": self.clock}
        ctx, outcome = lifecycle.send(self.runtime, self.api, host, path, h, raw, f"replay-{next(_flow_ids)}",
                                      loop=self.loop, tenant=tenant, notes=notes)
        wire = lifecycle.sent(ctx, outcome) or ctx.original
        return Sent(ctx, outcome, wire)

    def complete(self, sent: Sent, text: str) -> None:
        """Play the assistant's reply ``text`` as the turn of ``sent`` (runs the cw_turn_complete hooks)."""
        turn = lifecycle.turn_of(self.api, sent.ctx.model, dialect(self.api).reply(text))
        lifecycle.complete(self.runtime, sent.ctx, turn)

    def flush(self, timeout: float = 3600) -> bool:
        """Wait until memory has stored (and indexed) everything submitted so far."""
        svc = self.memory()
        return svc.flush(timeout) if svc is not None else True

    def dropped(self) -> int:
        """Items the ingestion queue dropped (it was full) since the runtime started."""
        svc = self.memory()
        ing = getattr(svc, "ingestor", None)
        return int(ing.stats.get("dropped", 0)) if ing is not None else 0

    def close(self) -> None:
        try:
            self.runtime.close()
        finally:
            self.loop.close()
