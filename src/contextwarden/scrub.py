"""The one redaction pass for what leaves the request path to be stored or shown.

Events (the JSONL log and the TUI's stream), exports and the inspector's bodies go through
:func:`scrub`: every string in them gets :func:`contextwarden.memory.secrets.redact_secrets` (the same
patterns memory uses, URL query credentials included), and every ``headers`` list or mapping has the
value of each credential-like header (by name or by value) replaced. Structures are copied where
something changed, never edited in place (a caller may still hold them).

Event strings repeat (tags, models, session ids, paths), so short ones are remembered with their
result: the pass costs a dictionary lookup for most of them.
"""

from __future__ import annotations

from typing import Any

from .memory.secrets import redact_text
from .lru import LRU
from .redact import REDACTED, is_secret_header

_MIN = 8  # no secret pattern matches fewer characters
_CACHE_MAX_LEN = 512
# a pure function of the text (shared by every runtime of the process on purpose: the same text always
# scrubs the same); a few long strings too: the same long text often comes again (an error message, a
# tool output that is in several events); a str keeps its hash, so a repeat costs one lookup
_cache = LRU(20_000)
_long = LRU(32)


def scrub_text(s: str) -> str:
    if len(s) < _MIN:
        return s
    return (_cache if len(s) <= _CACHE_MAX_LEN else _long).get(s, lambda: redact_text(s))


def scrub_headers(headers: Any) -> Any:
    """Headers as (name, value) pairs or a mapping, with every credential-like value replaced."""
    if isinstance(headers, dict):
        return {k: REDACTED if is_secret_header(str(k), v) else v for k, v in headers.items()}
    if isinstance(headers, (list, tuple)):
        out = []
        for item in headers:
            if isinstance(item, (list, tuple)) and len(item) == 2:
                k, v = item
                out.append([k, REDACTED if is_secret_header(str(k), v) else v])
            else:
                out.append(item)
        return out
    return headers


def scrub(obj: Any) -> Any:
    """``obj`` (JSON-like: dicts, lists, strings, numbers) with every secret in it replaced."""
    if isinstance(obj, str):
        return scrub_text(obj)
    if isinstance(obj, dict):
        out = None
        for k, v in obj.items():
            nv = scrub_headers(v) if k == "headers" else scrub(v)
            if nv is not v and (k == "headers" or nv != v):
                if out is None:
                    out = dict(obj)
                out[k] = nv
        return obj if out is None else out
    if isinstance(obj, (list, tuple)):
        new = [scrub(v) for v in obj]
        if any(a is not b for a, b in zip(new, obj)):
            return new if isinstance(obj, list) else tuple(new)
        return obj
    return obj
