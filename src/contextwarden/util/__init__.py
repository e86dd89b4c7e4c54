"""Small utilities with no knowledge of requests: the LRU cache, the redactor and scrubber, cw_home, encryption at rest."""

from typing import Any


def last_of(xs: list[Any], v: Any, default: Any = None) -> Any:
    """Index of the last ``v`` in ``xs`` (a C-speed scan), or ``default``."""
    return len(xs) - 1 - xs[::-1].index(v) if v in xs else default
