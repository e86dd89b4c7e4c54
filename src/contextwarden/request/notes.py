"""``ctx.notes``: what a stage hands to later stages and to the turn hooks, one declared key each.

A dict at run time (a third-party stage may keep its own keys under its own name); the keys the built-in
stages use are declared here with their type and writer, and ``tests/contextwarden/request/test_notes.py`` fails when code
reads or writes a key that is not, or a request's notes hold a value of another type.
"""

from __future__ import annotations

from typing import Any, TypedDict

from ..sessionctl.ledger import Control
from ..wire.dialects import ProviderContext


class ReplayNote(TypedDict, total=False):
    ts: float  # the trace's own time of the request
    index: int
    target_tokens: int


class BudgetScope(TypedDict):
    scope: str
    key: str
    used: float
    limit: float
    level: str


class ClearingNote(TypedDict, total=False):
    freed: int  # tokens
    by_index: dict[int, int]  # message index -> tokens freed


class Cleared(TypedDict, total=False):
    tool_use_id: str
    memory_id: str | None
    tool: str
    input: Any  # the call's input as the client sent it
    text: str
    tokens: int
    message_index: int
    new: bool  # not kept yet: the recall stage keeps it
    compressed: bool


class CompactionNote(TypedDict):
    lead: int  # messages lead..end of ctx.original were replaced
    end: int
    reused: bool
    summary_tokens: int
    messages: int


class Compacted(TypedDict):
    tool_use_id: str | None
    memory_id: str
    tool: str | None
    input: Any
    text: str


class Folded(TypedDict):
    memory_id: str
    text: str
    first: int
    last: int


class Notes(TypedDict, total=False):
    # the core (pipeline.prepare, lifecycle.run)
    transport: str  # "http", or "websocket" for a message of the Responses WebSocket
    provider: ProviderContext  # what the client delegated to the provider: read once, in prepare
    replay: ReplayNote  # replay only (plugins/baselines.py reads it)
    # budget
    level: str | None  # the budget level (budget.Level, a str enum), None: NORMAL
    budget: list[BudgetScope]  # the budget report of the request, one per scope
    # strip
    clean_text: dict[int, str]  # message index -> its text cleaned of channel envelopes (only those it changed)
    # tagging
    tags: list[str]  # keyword tags of the last user message
    active_tags: list[str]  # tags of the last ``tagging.active_turns`` messages
    # clearing (and compression, which adds to both)
    clearing: ClearingNote
    cleared: list[Cleared]  # every result cleared in this request
    # compaction
    compaction: CompactionNote
    compacted: list[Compacted]  # the tool results a new summary folded
    folded: list[Folded]  # the spans a new summary folded, kept whole
    # memory
    memory: dict[str, Any]  # what retrieval injected (injected, tokens, ids, ms, skipped, why, timings, ...)
    memory_source: tuple[int, Any]  # memory.produced: (first index captured, a view of the messages as the stages left them)
    memory_ingest_start: tuple[int, Any]  # (start, history) of the memory stage's ingestion start, worked out once
    memory_project: str | None  # the client's working directory (memory/project.py), worked out once
    # recall
    recalled: list[str]  # the texts auto-recall put back (replay's fidelity counts them)
    # session control (sessionctl.ledger)
    session_control: Control  # the session's controls read once a request (rollback, pins, compact now)


#: every declared key
KEYS = frozenset(Notes.__annotations__)
