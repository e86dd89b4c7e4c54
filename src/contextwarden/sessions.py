"""Session ids: which conversation a request belongs to."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

_SESSION_IN_USER_ID = re.compile(r"session_([0-9a-fA-F-]{8,})")


def _from_metadata(body: dict[str, Any]) -> str | None:
    md = body.get("metadata")
    if not isinstance(md, dict):
        return None
    uid = md.get("user_id")
    if not isinstance(uid, str):
        return None
    if uid.startswith("{"):  # Claude Code >= 2.1: a JSON object in a string
        try:
            sid = orjson.loads(uid).get("session_id")
            if sid:
                return str(sid)
        except (orjson.JSONDecodeError, AttributeError):
            pass
    m = _SESSION_IN_USER_ID.search(uid)  # older: user_<hash>_account_<uuid>_session_<uuid>
    return m.group(1) if m else None


def first_turn_hash(body: dict[str, Any]) -> str | None:
    msgs = body.get("messages") if isinstance(body.get("messages"), list) else None
    if msgs is None:
        inp = body.get("input")
        msgs = inp if isinstance(inp, list) else ([inp] if isinstance(inp, str) else None)
    if not msgs:
        return None
    first = next((m for m in msgs if isinstance(m, dict) and m.get("role") == "user"), msgs[0])
    return "h-" + hashlib.sha256(orjson.dumps(first, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def derive_session(headers, body: dict[str, Any] | None) -> tuple[str, str]:
    """(session id, where it came from)."""
    for name in ("x-contextwarden-session", "x-claude-code-session-id"):
        v = headers.get(name)
        if v:
            return v, name
    if isinstance(body, dict):
        sid = _from_metadata(body)
        if sid:
            return sid, "metadata.user_id"
        for key in ("prompt_cache_key", "user"):
            v = body.get(key)
            if isinstance(v, str) and v:
                return v, key
        h = first_turn_hash(body)
        if h:
            return h, "first-turn hash"
    return "unknown", "none"
