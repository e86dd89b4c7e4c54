"""Agent keys: which agent of a session sent a request (budgets are per session and per agent)."""

from __future__ import annotations

import hashlib
from typing import Any


def _system_text(body: dict[str, Any]) -> str:
    s = body.get("system")
    if isinstance(s, str):
        return s
    if isinstance(s, list):
        # Claude Code's first system block is a billing header that changes per version: skip it
        return "\n".join(b.get("text", "") for b in s if isinstance(b, dict)
                         and not str(b.get("text", "")).startswith("x-anthropic-billing-header"))
    return ""


def derive_agent(rule: str, headers, body: dict[str, Any], session: str) -> str:
    """``claude-code``: subagents share the session id but have their own system prompt, so the
    agent is the session plus a hash of the system prompt; ``header``: the x-contextwarden-agent
    header; ``session``: one agent per session."""
    if rule == "header":
        return headers.get("x-contextwarden-agent") or session
    if rule == "claude-code":
        sys_text = _system_text(body)
        if not sys_text:
            return session
        return f"{session}/{hashlib.sha256(sys_text.encode()).hexdigest()[:8]}"
    return session
