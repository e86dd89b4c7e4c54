"""Stable identifiers of remembered text.

``memory_id`` is the short id shown to models and users (the clearing stage puts it in the stub that
replaces a cleared tool result, so the text can be found again); ``content_hash`` is the full digest
the store deduplicates on.
"""

from __future__ import annotations

import hashlib


def content_hash(text: str) -> str:
    """SHA-256 hex digest of the UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def memory_id(text: str) -> str:
    """``"m-"`` + the first 16 hex digits of the text's SHA-256: short enough for a stub, long enough
    not to collide within one memory."""
    return id_of_hash(content_hash(text))


def id_of_hash(digest: str) -> str:
    """The memory id of a text whose :func:`content_hash` is ``digest`` (already worked out)."""
    return "m-" + digest[:16]
