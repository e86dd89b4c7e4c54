"""Small utilities with no knowledge of requests: the LRU cache, the redactor and scrubber, cw_home, encryption at rest."""

import os
from contextlib import suppress
from typing import Any


def last_of(xs: list[Any], v: Any, default: Any = None) -> Any:
    """Index of the last ``v`` in ``xs`` (a C-speed scan), or ``default``."""
    return len(xs) - 1 - xs[::-1].index(v) if v in xs else default


def rss_mb() -> float | None:
    """This process's resident memory in MB, or None where ``/proc`` does not say (not Linux)."""
    with suppress(OSError, ValueError), open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return None
