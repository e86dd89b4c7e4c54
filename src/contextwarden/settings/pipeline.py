from __future__ import annotations

from .base import Section


class PipelineSection(Section):
    order: list[str] = ["budget", "strip", "tagging", "clearing", "compaction", "memory"]
    """Stage names in the order they run. Registered stages not listed run after these, in load order.
    ``budget`` first (a BLOCKED request costs nothing more); ``memory`` last, so it knows what the
    pruning stages took out of the history and injects into the final last user message."""

    disabled: list[str] = []
    """Stage names that do not run."""

    stage_budget_ms: float = 250
    """Time budget of one stage for one request; a stage past it is abandoned and the original forwarded."""

    budgets_ms: dict[str, float] = {}
    """Per-stage budgets that override ``stage_budget_ms``, by stage name."""

    turn_workers: int = 2
    """Threads that run turn-complete hooks (ingestion, calibration) off the event loop."""
