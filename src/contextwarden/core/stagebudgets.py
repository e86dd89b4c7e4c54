"""Stage budgets that fit the machine: each stage's budget follows how long it recently took.

With ``pipeline.adaptive_budgets`` a stage's budget is ``budget_p95_factor`` times the p95 of its last
``budget_window`` calls, clamped between ``budget_floor_ms`` and ``budget_ceiling_ms`` (by default the
stage's fixed budget, ``budgets_ms`` / ``stage_budget_ms``, and 4 times that); the fixed budget until
``budget_min_samples`` calls. A call that ran past its budget counts as taking its whole budget, so a
machine that gets busy raises the budgets within a few requests.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

CEILING_FACTOR = 4.0  # the default ceiling, times the stage's fixed budget


@dataclass(frozen=True)
class Budget:
    """The budget a stage runs under for one request, and how it was set (for events and messages)."""

    ms: float
    fixed_ms: float  # the profile's budget of the stage (budgets_ms / stage_budget_ms)
    p95_ms: float | None = None  # the recent p95 it follows (None: fixed, not enough samples yet)

    @property
    def seconds(self) -> float:
        return self.ms / 1000

    def describe(self) -> str:
        if self.p95_ms is None:
            return f"{self.ms:.0f} ms budget"
        return f"{self.ms:.0f} ms budget (adaptive: recent p95 {self.p95_ms:.0f} ms, profile's {self.fixed_ms:.0f} ms)"


class StageTimes:
    """The recent durations of each stage's calls (thread-safe; one per Runtime)."""

    def __init__(self) -> None:
        self._d: dict[str, deque[float]] = {}
        self._p95: dict[str, tuple[int, float]] = {}  # stage -> (calls recorded when computed, p95)
        self._calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def record(self, stage: str, ms: float, window: int) -> None:
        with self._lock:
            d = self._d.get(stage)
            if d is None or d.maxlen != window:
                d = self._d[stage] = deque(d or (), maxlen=max(1, window))
            d.append(ms)
            self._calls[stage] = self._calls.get(stage, 0) + 1

    def p95(self, stage: str, min_samples: int) -> float | None:
        with self._lock:
            d = self._d.get(stage)
            if d is None or len(d) < max(1, min_samples):
                return None
            n = self._calls[stage]
            got = self._p95.get(stage)
            # sorted again once 5% of the window is new, not on every call of every stage
            if got is not None and n - got[0] < max(1, len(d) // 20):
                return got[1]
            xs = sorted(d)
        v = xs[min(len(xs) - 1, int(0.95 * len(xs)))]
        with self._lock:
            self._p95[stage] = (n, v)
        return v

    def budget(self, stage: str, p) -> Budget:
        """The budget of ``stage`` now, under the pipeline settings ``p``."""
        fixed = float(p.budgets_ms.get(stage, p.stage_budget_ms))
        p95 = self.p95(stage, p.budget_min_samples) if p.adaptive_budgets else None
        if p95 is None:
            return Budget(fixed, fixed)
        ceiling = float(p.budget_ceiling_ms) if p.budget_ceiling_ms is not None else CEILING_FACTOR * fixed
        floor = min(float(p.budget_floor_ms) if p.budget_floor_ms is not None else fixed, ceiling)
        return Budget(min(ceiling, max(floor, p.budget_p95_factor * p95)), fixed, p95)
