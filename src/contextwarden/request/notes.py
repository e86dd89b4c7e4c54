"""``ctx.notes``: what a stage hands to later stages and to the turn hooks. A dict at run time (a
third-party stage keeps its own keys under its own name); the built-in stages' keys are declared here
(``tests/contextwarden/request/test_notes.py`` checks code and values against them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict

from ..util.lru import LRU
from ..wire.dialects import ProviderContext


@dataclass(frozen=True)
class Control:
    """What the user decided for a session, as one request sees it (read-only)."""

    key: str
    record: dict[str, Any] = field(default_factory=dict)
    # the runtime's memo of filtered records (see applied): never a module's, so runtimes share nothing
    memo: LRU | None = field(default=None, compare=False, repr=False)

    @property
    def pins(self) -> list[dict[str, Any]]:
        return self.record.get("pins") or []

    @property
    def compact_now(self) -> bool:
        return bool(self.record.get("compact_now"))

    @property
    def hold(self) -> bool:
        return bool(self.record.get("hold"))

    def off(self, stage: str) -> frozenset:
        return frozenset((self.record.get("off") or {}).get(stage) or ())

    def is_off(self, stage: str, ref: str) -> bool:
        return ref in ((self.record.get("off") or {}).get(stage) or ())

    def holds(self, tokens: int, settings) -> bool:
        """After a rollback, new decisions wait while the request fits the window (else the next
        request, past the thresholds still, would make again the decision just rolled back); compact
        now, or a request that would not fit, ends the wait."""
        return self.hold and not self.compact_now and tokens <= settings.tokens.context_window

    def applied(self, stage: str, records: dict[str, Any], pinned: frozenset = frozenset()) -> dict[str, Any]:
        """``records`` (a stage's stored records by ref) without those turned off or pinned; the same
        object when none is, and the same filtered object while neither changes (stages compare the
        records they re-applied by identity)."""
        off = self.off(stage)
        if not (off or pinned) or not records:
            return records
        drop = (off | pinned) & records.keys()
        if not drop:
            return records
        def build() -> tuple[dict[str, Any], frozenset, dict[str, Any]]:
            return records, drop, {k: v for k, v in records.items() if k not in drop}

        memo, key = self.memo if self.memo is not None else LRU(1), (self.key, stage)
        got = memo.get(key, build)
        if got[0] is not records or got[1] != drop:
            memo.put(key, got := build())
        return got[2]


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
    freed_free: int  # of freed: what steps only a free moment allows took (compaction's free-moment threshold)


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
