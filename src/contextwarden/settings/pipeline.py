from __future__ import annotations

from .base import Section


class PipelineSection(Section):
    order: list[str] = ["strip", "tagging", "memory", "clearing", "compaction", "budget"]
    """Stage names in the order they run. Registered stages not listed run after these, in load order."""

    disabled: list[str] = []
    """Stage names that do not run."""

    stage_budget_ms: float = 250
    """Time budget of one stage for one request; a stage past it is abandoned and the original forwarded."""

    budgets_ms: dict[str, float] = {}
    """Per-stage budgets that override ``stage_budget_ms``, by stage name."""

    turn_workers: int = 2
    """Threads that run turn-complete hooks (ingestion, calibration) off the event loop."""
