"""Agent keys: which agent of a session sent a request (budgets are per session and per agent).

Claude Code's subagents send the session id of the main agent with their own system prompt, so under
the ``claude-code`` rule the agent is the session plus a fingerprint of the system prompt without what
changes while one agent runs (the billing header, dates, the model lines, the ``gitStatus`` snapshot).
The main agent ("You are an interactive ...") is ``<session>/main``; any other
``<session>/<8 hex of its fingerprint>``.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from ..util.lru import memoized
from .sessions import CLAUDE_CODE_SESSION

AGENT_HEADER = "x-contextwarden-agent"

_BILLING = "x-anthropic-billing-header"
_VOLATILE_LINE = re.compile(
    r"(?im)^.*(?:x-anthropic-billing-header|cc_version=|today's date|currentdate|current date|"
    r"model id is|you are powered by the model|knowledge cutoff).*$")
_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2})?(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?)?\b")
_GIT_STATUS = re.compile(r"(?s)(?:^|\n)\s*gitStatus:.*")
_SPACE = re.compile(r"\s+")
_MAIN_AGENT = re.compile(r"(?i)\byou are an interactive (?:cli tool|agent)\b")


def _blocks_text(system: Any) -> list[str]:
    if isinstance(system, str):
        return [system]
    if isinstance(system, list):
        return [str(b.get("text", "")) for b in system if isinstance(b, dict)
                and not str(b.get("text", "")).startswith(_BILLING)]
    return []


def normalise_system(body: dict[str, Any]) -> str:
    """The system prompt with everything that changes within one agent's life removed."""
    return _normalise_texts(_blocks_text(body.get("system")))


def _normalise_texts(texts) -> str:
    out = []
    for text in texts:
        text = _GIT_STATUS.sub("", text)
        text = _VOLATILE_LINE.sub("", text)
        text = _DATE.sub("<date>", text)
        text = _SPACE.sub(" ", text).strip()
        if text:
            out.append(text)
    return "\n".join(out)


def claude_code_agent(body: dict[str, Any], session: str) -> str:
    """``<session>/main`` for Claude Code's main agent, ``<session>/<fingerprint>`` for the others."""
    suffix = _agent_suffix(tuple(_blocks_text(body.get("system"))))
    return f"{session}/{suffix}" if suffix else session


@memoized(256)
def _agent_suffix(texts: tuple[str, ...]) -> str | None:
    text = _normalise_texts(texts)
    if not text:
        return None
    if _MAIN_AGENT.search(text):
        return "main"
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def derive_agent(rule: str, headers, body: dict[str, Any], session: str) -> str:
    """The agent key of a request under the profile's ``budget.agent_rule``.

    ``claude-code``: see the module docstring (an explicit ``x-contextwarden-agent`` header wins);
    ``header``: the ``x-contextwarden-agent`` header as given (one budget may then span sessions), else
    the session; ``session``: one agent per session.
    """
    explicit = headers.get(AGENT_HEADER)
    if rule == "header":
        return explicit or session
    if rule == "claude-code":
        return explicit or claude_code_agent(body, session)
    return session


def helper_call(session_source: str, session: str, agent: str, body: dict[str, Any]) -> bool:
    """Whether a request is one of Claude Code's helper calls: another agent than the session's main one
    that offers no tools (the session title, the topic check). Such a call wraps the person's words in
    an instruction of its own (``<session>…</session> Write the title in the language…``): memory
    neither stores, tags nor serves it. A subagent offers tools and is not one."""
    return (session_source == CLAUDE_CODE_SESSION and agent != session and not agent.endswith("/main")
            and not body.get("tools"))
