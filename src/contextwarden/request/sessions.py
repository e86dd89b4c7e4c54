"""Session ids: which conversation a request belongs to."""

from __future__ import annotations

import hashlib
import re
from contextlib import suppress
from typing import Any

import orjson

from ..wire.conversation import strip_cache_control

CLAUDE_CODE_SESSION = "x-claude-code-session-id"  # the header Claude Code names its session in

_SESSION_IN_USER_ID = re.compile(r"session_([0-9a-fA-F-]{8,})")


def _from_metadata(body: dict[str, Any]) -> str | None:
    uid = md.get("user_id") if isinstance(md := body.get("metadata"), dict) else None
    if not isinstance(uid, str):
        return None
    if uid.startswith("{"):  # Claude Code >= 2.1: a JSON object in a string
        with suppress(orjson.JSONDecodeError, AttributeError):
            if sid := orjson.loads(uid).get("session_id"):
                return str(sid)
    m = _SESSION_IN_USER_ID.search(uid)  # older: user_<hash>_account_<uuid>_session_<uuid>
    return m.group(1) if m else None


# Block types that carry the text a person typed (Anthropic and Chat ``text``, Responses ``input_text``)
_TEXT_TYPES = frozenset({"text", "input_text"})


def _first_user_message(body: dict[str, Any]) -> Any:
    msgs = body.get("messages") if isinstance(body.get("messages"), list) else None
    if msgs is None:
        inp = body.get("input")
        msgs = inp if isinstance(inp, list) else ([inp] if isinstance(inp, str) else None)
    if not msgs:
        return None
    return next((m for m in msgs if isinstance(m, dict) and m.get("role") == "user"), msgs[0])


def _block(b: Any) -> Any:
    """One content block as it is hashed: a text block is its text; anything else loses only its
    ``cache_control`` (nested blocks' too)."""
    if isinstance(b, str):
        return {"type": "text", "text": b}
    if isinstance(b, dict) and b.get("type") in _TEXT_TYPES and isinstance(b.get("text"), str):
        return {"type": "text", "text": b["text"]}
    return strip_cache_control(b)


def first_turn_content(body: dict[str, Any]) -> list[Any] | None:
    """What the first user message says, in a form that does not move between requests of one
    conversation (clients move cache breakpoints and turn a string into a block list): its content as
    a list of blocks, text blocks reduced to their text, no ``cache_control`` anywhere."""
    first = _first_user_message(body)
    if first is None:
        return None
    if isinstance(first, dict) and "content" not in first:  # no message at all (a lone tool call item)
        return [strip_cache_control(first)]
    content = first.get("content") if isinstance(first, dict) else first
    if content is None:
        return []
    blocks = content if isinstance(content, list) else [content]
    return [_block(b) for b in blocks]


def first_turn_hash(body: dict[str, Any]) -> str | None:
    content = first_turn_content(body)
    return None if content is None else "h-" + hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def derive_session(headers, body: dict[str, Any] | None) -> tuple[str, str]:
    """(session id, where it came from)."""
    for name in ("x-contextwarden-session", CLAUDE_CODE_SESSION):
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
