"""The request as it came in (:class:`Incoming`) and the per-request object stages receive."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..models.base import ApiKind, WireModel
from ..wire.apis import HTTP, WEBSOCKET
from .agents import helper_call
from .notes import Notes

if TYPE_CHECKING:
    from ..core.runtime import Runtime
    from ..settings import Settings


@dataclass(frozen=True)
class Incoming:
    """One request as it came in, whoever carries it: what ``lifecycle.run`` reads. ``route``: the
    handler that took it (HTTP, COUNT, WEBSOCKET)."""

    api: ApiKind
    host: str
    path: str
    headers: Sequence[tuple[str, str]]
    raw: bytes
    flow_id: str
    consumed: Mapping[str, str] = field(default_factory=dict)  # the headers addressed to the proxy itself
    route: str = HTTP
    mode: str | None = None  # the ``request`` event's mode (None: not announced); "active": "bypass" when bypassed
    count: bool = True  # count tokens_in
    # in-process callers: set on the context before counting (a benchmark's tenant, replay's clock
    # in the notes, a test's run-time settings)
    tenant: str | None = None
    settings: Any = None
    notes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def transport(self) -> str:
        return "websocket" if self.route == WEBSOCKET else "http"


@dataclass
class BlockedResponse:
    """An answer the proxy gives itself instead of forwarding (a BLOCKED budget)."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class RequestContext:
    runtime: Runtime
    settings: Settings  # snapshot for this request (run-time changes apply to the next one)
    flow_id: str
    api: ApiKind
    host: str
    path: str
    headers: list[tuple[str, str]]  # credentials already redacted
    session: str
    session_source: str
    tenant: str
    agent: str
    model: str | None
    stream: bool
    original: dict[str, Any]  # the decoded body as the client sent it: never mutate
    request: WireModel  # the typed body: stages put edited copies of its frozen messages in (hookspecs)
    notes: Notes = field(default_factory=dict)  # type: ignore[assignment]  # data stages hand on: notes.py declares each key
    stage_results: list[dict[str, Any]] = field(default_factory=list)
    blocked: BlockedResponse | None = None
    started: float = field(default_factory=time.perf_counter)
    tokens_in: int | None = None  # estimate of the original request
    tokens_out: int | None = None  # estimate of what is sent
    # The client's own auth headers, for a stage that must call the upstream as the user (the
    # optional LLM summariser). Never emitted, logged or stored; excluded from repr.
    auth: dict[str, str] = field(default_factory=dict, repr=False)
    request_bytes: bytes | None = field(default=None, repr=False)  # the decoded body as received
    # where this request's time went, ms: parse, count_in, stages, dump, validate, count_out, serialise
    timings: dict[str, float] = field(default_factory=dict)
    message_raw: list[bytes] | None = field(default=None, repr=False)  # orjson.dumps of each original message
    known_messages: int = 0  # leading messages not decoded again: a recent request had them (prefixparse)
    raw_exact: bool = False  # message_raw is exactly orjson.dumps of each original message (not of an equal one)
    history: Any = field(default=None, repr=False)  # this request's view of its conversation (history.History)
    deadline: float | None = None  # perf_counter time by which the running stage must return (its budget)
    budget_ms: float | None = None  # the running stage's budget (adaptive: pipeline.adaptive_budgets)
    event_extra: dict[str, Any] = field(default_factory=dict)  # added to every event (the fall-back's: fallback=True)
    # when set, events are held here (type, data) instead of emitted: the fall-back's, until it is used
    held_events: list[tuple[str, dict[str, Any]]] | None = field(default=None, repr=False)
    # threads running a stage call abandoned past its budget: what they emit from then on is marked
    # ``late`` (it says what that call did, not what went upstream)
    late_threads: set[int] = field(default_factory=set, repr=False)

    @property
    def helper_call(self) -> bool:
        """One of Claude Code's helper calls (a title or topic prompt): see :func:`agents.helper_call`."""
        return helper_call(self.session_source, self.session, self.agent, self.original)

    def emit(self, type: str, **data: Any) -> Any:
        data.setdefault("api", self.api.value)
        if self.event_extra:
            data.update(self.event_extra)
        if self.late_threads and threading.get_ident() in self.late_threads:
            data["late"] = True
        if self.held_events is not None:
            self.held_events.append((type, data))
            return None
        return self.runtime.bus.emit(type, data, flow_id=self.flow_id, session=self.session)

    def block(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        """Answer the client directly instead of forwarding (the budget stage's BLOCKED)."""
        self.blocked = BlockedResponse(status, headers, body)
