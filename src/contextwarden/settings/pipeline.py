from __future__ import annotations

from typing import Literal

from .base import Section


class PipelineSection(Section):
    order: list[str] = ["budget", "strip", "tagging", "clearing", "compression", "compaction", "recall", "memory"]
    """Stage names in the order they run. Registered stages not listed run after these, in load order.
    ``budget`` first (a BLOCKED request costs nothing more); ``memory`` last, so it knows what the
    pruning stages took out of the history and injects into the final last user message."""

    disabled: list[str] = []
    """Stage names that do not run."""

    provider_take_over: list[Literal["clear_tool_uses", "compaction"]] = []
    """What a client delegated to the provider's own context management that the proxy does instead: the
    client's edit (Anthropic ``clear_tool_uses_20250919``; ``compact_20260112`` or the Responses
    ``context_management`` compaction entry) is taken out of the request and clearing / compaction do the
    work cache-safely. Empty (the default): the stages step back for what was delegated
    (docs/provider-context-management.md)."""

    stage_budget_ms: float = 250
    """Time budget of one stage for one request; a stage past it is abandoned and the request goes out as
    the session's decided state (its stored decisions re-applied, without this request's new work)."""

    budgets_ms: dict[str, float] = {}
    """Per-stage budgets that override ``stage_budget_ms``, by stage name."""

    adaptive_budgets: bool = True
    """Each stage's budget follows how long it recently took: ``budget_p95_factor`` times the p95 of its
    last ``budget_window`` calls, between ``budget_floor_ms`` and ``budget_ceiling_ms``
    (:mod:`contextwarden.core.stagebudgets`). Off: the fixed budgets above."""

    budget_p95_factor: float = 4.0
    """Adaptive budgets: this many times the stage's recent p95."""

    budget_floor_ms: float | None = None
    """Adaptive budgets never go below this (None: the stage's fixed budget, so a quiet machine keeps the
    profile's budgets). Lower it to abandon a hung stage sooner where its p95 is small."""

    budget_ceiling_ms: float | None = None
    """Adaptive budgets never go above this (None: 4 times the stage's fixed budget: on a busy machine,
    where every stage runs slower, a budget stretches rather than the request falling back)."""

    budget_window: int = 200
    """Adaptive budgets: the stage's calls the p95 is taken over."""

    budget_min_samples: int = 20
    """Adaptive budgets: the fixed budget applies until a stage has this many calls."""

    fallback_budget_ms: float = 2000
    """Time limit for building the session's decided state (the fall-back after a stage failed or
    overran: every stage's stored decisions re-applied). Past it, the client's original bytes go."""

    turn_workers: int = 2
    """Threads that run turn-complete hooks (ingestion, calibration) off the event loop."""

    turn_queue: int = 256
    """Completed turns waiting for those threads at most; past it the oldest waiting is dropped (a
    ``backpressure`` event says how many): each holds its parsed request, and traffic never waits."""

    shutdown_turn_s: float = 2.0
    """On shutdown, seconds given to the turn work still waiting."""

    gc_tuning: bool = True
    """Once the proxy is warm (tokenizers loaded at start-up, the memory model when it is ready), move
    every object that exists then out of the garbage collector's sight (``gc.freeze``) and collect the
    young generation less often (``gc_threshold``). Without it, a full collection
    walks the millions of objects of mitmproxy, Chroma and the embedding runtime: pauses of 0.3-1 s at
    p99 (bench/proxy_latency.py). Process-wide: once applied it stays until the process ends."""

    gc_threshold: list[int] = [10_000, 20, 100]
    """With ``gc_tuning``: the collector's thresholds (``gc.set_threshold``); never lowered below Python's.
    Frozen objects no longer count towards Python's "full collection only when a quarter of the heap is
    new" rule, so the third threshold is what keeps full collections rare; the proxy also runs one
    when it has been idle for ``gc_idle_s`` seconds."""

    gc_idle_s: float = 5.0
    """With ``gc_tuning``: a full collection runs once the proxy has had no request for this long (0: never)."""

    gc_full_s: float = 15.0
    """With ``gc_tuning``: under load, a full collection at least this often (0: only when idle). Once
    mitmproxy's finished flows (request and response bodies) waited as cyclic garbage for it, ~15 MB/s at
    issue 19's load; with ``release_flows`` they are freed by reference counting and what waits is small.
    Each walks every live object that is not frozen, holding the interpreter lock (a pause every request
    in flight waits out). With ``gc_freeze_under_load`` what survives one is frozen, so the next walks
    only what was made since: the more often, the shorter each pause (issue 19's load, the engine: every
    60 s, 130-190 ms of CPU each; every 15 s, a quarter of that), the same work in all."""

    gc_freeze_under_load: bool = True
    """With ``gc_tuning``: what survives a full collection under load is frozen (``gc.freeze``), so the
    next one walks only what was made since: the conversations' histories, which live as long as their
    sessions, are walked once, not every ``gc_full_s`` (issue 19: a collection's pause 230-340 ms at
    p50/max after the cycles below were gone, every request in flight waiting it out). What is frozen
    and later dies is freed by reference counting as before; cyclic garbage among it waits for the idle
    collection, which unfreezes first. Safe because the request path makes next to no cyclic garbage
    (``release_flows``, ``contextwarden.core.flowrelease``; a ``gc`` event's ``freed`` shows it)."""

    engine_timeout_s: float = 60.0
    """How long mitmdump's process waits for the engine's answer to a request before sending the client's
    own (``contextwarden.engine``: the engine enforces the stages' budgets itself; this only catches an
    engine that hangs or is stopped). An ``error`` event (``where: engine link``) says so."""

    release_flows: bool = True
    """A finished flow is freed by reference counting (``contextwarden.core.flowrelease``): once mitmproxy drops
    a request's stream layer, the layer's reference to its flow is cut, so the flow and its request and
    response bodies do not wait as cyclic garbage for a full collection. Process-wide, applied at
    start-up (a patch of mitmproxy's HTTP layer; skipped, with a warning, on a mitmproxy whose layer
    differs). With it, mitmproxy's type check of optional fields no longer leaves an exception cycle
    holding the flow being built (``contextwarden.core.flowrelease``: every request and response, and each
    mirror the engine rebuilds)."""

    malloc_keep_mb: int = 64
    """On Linux with glibc: the C allocator keeps up to this much freed memory for reuse and serves
    blocks up to this size from it (``M_TRIM_THRESHOLD``, ``M_MMAP_THRESHOLD``), applied at start-up.
    glibc's defaults give every block over ~128 KB (a request body, its copies) fresh pages from the
    kernel and give them back when freed, so a 600 KB request pays for faulting its memory in again:
    a 150K-token repeat request's parse time varied 0.6-2.7 ms from that alone (in a VM, where a page
    fault costs most). 0 leaves glibc's defaults. Process-wide, like ``gc_tuning``."""

    recent_conversations: int = 64
    """Conversations whose latest body the proxy keeps to read the next one as only its new messages
    (prefixparse, message bytes). Under more concurrent sessions than this, every request is parsed and
    dumped whole again (50 sessions against the earlier 8 and 32: a few ms of CPU per 150K-token request).
    Each costs its parsed history in memory (~3 MB at 150K tokens) while kept."""

    switch_interval_ms: float = 1.0
    """The interpreter's thread switch interval (``sys.setswitchinterval``), applied at start-up. The event
    loop that relays every byte takes the interpreter lock back after each socket call; while a worker
    thread computes (a stage, reading an observed request, turn work) it waits up to this long each time,
    and a streamed response makes hundreds of such calls. Python's default, 5 ms, made that wait most of
    the latency the proxy added under load. 0 leaves Python's default. Process-wide."""
