"""Functions a test calls in a worker process (``contextwarden.core.workerpool``): this module imports nothing of
the product, so a call loads nothing more there than the worker had."""

from __future__ import annotations

import sys


def imported(name: str) -> bool:
    """Whether module ``name`` is loaded in the process this runs in."""
    return name in sys.modules
