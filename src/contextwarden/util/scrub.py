"""The one redaction pass for what leaves the request path to be stored or shown (events, exports, the
inspector's bodies): every string gets :func:`contextwarden.util.redact.redact_secrets`, a string whose
member's name says it is a secret (``{"db_password": ...}``) is replaced whole, and every ``headers``
list or mapping has each credential-like value replaced. Structures are copied where something changed,
never edited in place. Strings that repeat (tags, models, session ids, header values) are remembered
with their result, so most cost a dictionary lookup.
"""

from __future__ import annotations

from typing import Any

from .lru import LRU, shared
from .redact import REDACTED, field_names_secret, is_secret_header, redact_field, redact_text

_MIN = 8  # no secret pattern matches fewer characters
_CACHE_MAX_LEN = 512
# Pure functions of the text (shared by every runtime of the process on purpose: the same text always
# scrubs the same): a text maps to its redacted form, or to _SAME when nothing in it is a secret (the
# common case: no comparison of the two texts is needed to see that nothing changed); a (name, value)
# header pair to whether it is a credential.
_memo = shared(LRU(20_000))
_SAME = object()
# a few long strings too: the same long text often comes again (an error message, a tool output that
# is in several events); a str keeps its hash, so a repeat costs one lookup
_long = shared(LRU(32))
_PLAIN = frozenset({int, float, bool, type(None)})  # JSON values that cannot hold text


def _redacted(s: str) -> Any:
    r = redact_text(s)
    return _SAME if r == s else r


def scrub_text(s: str) -> str:
    if len(s) < _MIN:
        return s
    if len(s) > _CACHE_MAX_LEN:
        return _long.get(s, redact_text, s)
    v = _memo.get(s, _redacted, s)
    return s if v is _SAME else v


def scrub_once(s: str) -> str:
    """:func:`scrub_text` without the memo, for a text that will not come again (a terminal line: it
    starts with the time): remembering it would only push the texts that do repeat out."""
    return s if len(s) < _MIN else redact_text(s)


def _secret_header(k: Any, v: Any) -> bool:
    """``is_secret_header``, remembered for (name, value) texts: they repeat with every request of a client."""
    if type(k) is not str or type(v) is not str:
        return is_secret_header(str(k), v)
    return _memo.get((k, v), is_secret_header, k, v)


def _header_value(k: Any, v: Any) -> Any:
    """A header's value scrubbed: replaced whole when credential-like, else (not a string) scrubbed as data."""
    return REDACTED if _secret_header(k, v) else v if type(v) is str else scrub(v)


def scrub_headers(headers: Any) -> Any:
    """Headers as (name, value) pairs or a mapping, with every credential-like value replaced (the same
    object when none was); a value that is not a string is scrubbed as data."""
    if isinstance(headers, dict):
        out = None
        for k, v in headers.items():
            nv = _header_value(k, v)
            if nv is not v:
                if out is None:
                    out = dict(headers)
                out[k] = nv
        return headers if out is None else out
    if isinstance(headers, (list, tuple)):
        new = None
        for i, item in enumerate(headers):
            if isinstance(item, (list, tuple)) and len(item) == 2:
                k, v = item
                nv = _header_value(k, v)
                nitem = item if nv is v else [k, nv]
            else:
                nitem = scrub(item)
            if nitem is item:
                continue
            if new is None:
                new = list(headers)
            new[i] = nitem
        return headers if new is None else new
    return scrub(headers)


def _scrub_dict(obj: dict) -> dict:
    out = None
    young = _memo.young  # (a generation swapped meanwhile only costs lookups)
    for k, v in obj.items():
        t = type(v)
        if t is str:
            if type(k) is str and field_names_secret(k):  # {"db_password": "..."}: the name says what the value is
                nv = redact_field(k, v)
                if nv == v:
                    continue
            elif len(v) < _MIN or young.get(v) is _SAME:
                continue
            else:
                nv = scrub_text(v)
                if nv is v:
                    continue
        elif t in _PLAIN:
            continue
        else:
            nv = scrub_headers(v) if k == "headers" else scrub(v)
            if nv is v:
                continue
        if out is None:
            out = dict(obj)
        out[k] = nv
    return obj if out is None else out


def _scrub_seq(obj: list | tuple) -> list | tuple:
    new = None
    young = _memo.young
    for i, v in enumerate(obj):
        t = type(v)
        if t is str:
            if len(v) < _MIN or young.get(v) is _SAME:
                continue
            nv = scrub_text(v)
        elif t in _PLAIN:
            continue
        else:
            nv = scrub(v)
        if nv is v:
            continue
        if new is None:
            new = list(obj)
        new[i] = nv
    if new is None:
        return obj
    return new if isinstance(obj, list) else tuple(new)


def scrub(obj: Any) -> Any:
    """``obj`` (JSON-like: dicts, lists, strings, numbers) with every secret in it replaced: the same
    object when nothing was, else a copy of what changed."""
    if isinstance(obj, str):  # (subclasses too: a str enum, as its text)
        return scrub_text(obj)
    if isinstance(obj, dict):
        return _scrub_dict(obj)
    if isinstance(obj, (list, tuple)):
        return _scrub_seq(obj)
    return obj
