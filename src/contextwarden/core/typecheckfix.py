"""mitmproxy's type check of optional fields, without a reference cycle per check (issue 19).

mitmproxy checks every ``RequestData`` / ``ResponseData`` it builds (``__post_init__``, so every request
and response, and every mirror the engine rebuilds with ``from_state``) with
``typecheck.check_option_type``. For an optional field that is None (``trailers``, ``content``,
``timestamp_end``) it tries the other type first, which raises a ``TypeError`` kept in a local of the
raising frame: the exception, its traceback and that frame are a cycle, and the frame's callers (through
``f_back``), whose locals hold the request being built and its body, hang on it. So every flow's body
waited for a full collection, and in the engine (a mirror a request, ~1 MB each at 150K tokens) those
were most of what a full collection freed, while the collection held the interpreter lock for
hundreds of milliseconds.

:func:`install` replaces the module's function with one that tries a union's members the same way, in
the same order, with the same error, and cuts each caught exception from its traceback, so reference
counting frees it at once. Nothing else changes; a mitmproxy without the function is left as it is.
"""

from __future__ import annotations

import typing
from types import UnionType
from typing import Any

from mitmproxy.utils import typecheck

_ORIGINAL: Any = getattr(typecheck, "check_option_type", None)  # (None: a mitmproxy without it is left as it is)


def _check(name: str, value: Any, typeinfo: Any) -> None:
    origin = typing.get_origin(typeinfo)
    if origin is typing.Union or origin is UnionType:
        for T in typing.get_args(typeinfo):
            try:
                _check(name, value, T)
            except TypeError as e:
                # the raising frame holds the exception in a local: without its traceback the frame,
                # and what its callers hold, are freed by reference counting, not by a collection
                e.__traceback__ = None
                continue
            return
        raise TypeError(f"Expected {typeinfo} for {name}, but got {type(value)}.")
    _ORIGINAL(name, value, typeinfo)


def install() -> bool:
    """Put the cycle-free check in place; whether it is. The original's own recursion (tuples,
    sequences) looks the name up in its module: it reaches this one too, so a union inside a tuple is
    checked without cycles as well."""
    if _ORIGINAL is None:
        return False
    typecheck.check_option_type = _check
    return True
