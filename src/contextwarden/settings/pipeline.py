from __future__ import annotations

from typing import Literal

from .base import Section


class PipelineSection(Section):
    order: list[str] = ["budget", "strip", "tagging", "clearing", "compression", "compaction", "recall", "memory", "breakpoints"]
    """Stage names in the order they run; registered stages not listed run after these, in load order.
    ``budget`` first (a BLOCKED request costs nothing more); ``memory`` after the pruning stages (it
    injects into the final last user message, knowing what they took out); ``breakpoints`` last (it marks
    the final messages)."""

    disabled: list[str] = []
    """Stage names that do not run."""

    provider_take_over: list[Literal["clear_tool_uses", "compaction"]] = []
    """What a client delegated to the provider's own context management that the proxy does instead (the
    client's edit is taken out of the request; clearing / compaction do the work cache-safely). Empty:
    the stages step back for what was delegated (docs/provider-context-management.md)."""

    stage_budget_ms: float = 250
    """Time budget of one stage for one request; a stage past it is abandoned and the request goes out as
    the session's decided state."""

    budgets_ms: dict[str, float] = {}
    """Per-stage budgets that override ``stage_budget_ms``, by stage name."""

    adaptive_budgets: bool = True
    """Each stage's budget is ``budget_p95_factor`` times the p95 of its last ``budget_window`` calls,
    between ``budget_floor_ms`` and ``budget_ceiling_ms`` (:mod:`contextwarden.core.stagebudgets`).
    Off: the fixed budgets above."""

    budget_p95_factor: float = 4.0
    """Adaptive budgets: this many times the stage's recent p95."""

    budget_floor_ms: float | None = None
    """Adaptive budgets never go below this (None: the stage's fixed budget)."""

    budget_ceiling_ms: float | None = None
    """Adaptive budgets never go above this (None: 4 times the stage's fixed budget)."""

    budget_window: int = 200
    """Adaptive budgets: the stage's calls the p95 is taken over."""

    budget_min_samples: int = 20
    """Adaptive budgets: the fixed budget applies until a stage has this many calls."""

    fallback_budget_ms: float = 2000
    """Time limit for building the session's decided state (the fall-back); past it the client's
    original bytes go."""

    turn_workers: int = 2
    """Threads that run turn-complete hooks (ingestion, calibration) off the event loop."""

    turn_queue: int = 256
    """Completed turns waiting for those threads at most; past it the oldest is dropped (a
    ``backpressure`` event says how many)."""

    shutdown_turn_s: float = 2.0
    """On shutdown, seconds given to the turn work still waiting."""

    gc_tuning: bool = True
    """Once warm, freeze every object that exists (``gc.freeze``) and collect the young generation less
    often (``gc_threshold``): a full collection over mitmproxy's, Chroma's and the embedding runtime's
    objects pauses 0.3-1 s. Process-wide."""

    gc_threshold: list[int] = [10_000, 20, 100]
    """With ``gc_tuning``: the collector's thresholds (``gc.set_threshold``), never lowered below Python's."""

    gc_idle_s: float = 5.0
    """With ``gc_tuning``: a full collection runs once the proxy has had no request for this long (0: never)."""

    gc_full_s: float = 15.0
    """With ``gc_tuning``: under load, a full collection at least this often (0: only when idle); with
    ``gc_freeze_under_load`` each walks only what was made since the last."""

    gc_freeze_under_load: bool = True
    """With ``gc_tuning``: what survives a full collection under load is frozen, so the next one walks
    only what was made since. Frozen cyclic garbage waits for the idle collection, which unfreezes first."""

    forget_s: float = 30.0
    """With ``gc_idle_s`` on: after this long without a request the conversations' caches go
    (``Runtime.forget_conversations``): the next request of each reads it whole, and the RSS falls back."""

    recycle: bool = True
    """The engine process starts itself again in place (same pid, its memory process kept) after the idle
    forget when its RSS is ``recycle_mb`` over its start-up RSS: the interpreter's heap never gives
    fragmented memory back, a new one starts small."""

    recycle_mb: int = 64
    """With ``recycle``: how far over its start-up RSS the engine's is before it starts itself again (a
    tokenizer loaded since, by the first request of a model that counts with it, is not growth)."""

    engine_timeout_s: float = 60.0
    """How long mitmdump's process waits for the engine's answer before sending the client's own bytes
    (an ``error`` event, ``where: engine link``, says so)."""

    release_flows: bool = True
    """Free a finished flow by reference counting (``contextwarden.core.flowrelease``, a patch of
    mitmproxy's HTTP layer, skipped with a warning where the layer differs), not by a full collection."""

    malloc_keep_mb: int = 64
    """glibc only: the C allocator keeps up to this much freed memory for reuse and serves blocks up to
    this size from it (``M_TRIM_THRESHOLD``, ``M_MMAP_THRESHOLD``), so large request bodies do not fault
    fresh pages in each time. 0: glibc's defaults. Process-wide."""

    recent_conversations: int = 64
    """Conversations whose latest body is kept to read the next one as only its new messages
    (prefixparse); each costs its parsed history in memory (~3 MB at 150K tokens)."""

    switch_interval_ms: float = 1.0
    """The interpreter's thread switch interval (``sys.setswitchinterval``): how long the event loop that
    relays bytes may wait for a worker thread to give up the interpreter lock. 0: Python's default (5 ms)."""
