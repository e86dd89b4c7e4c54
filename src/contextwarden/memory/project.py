"""Which project a request belongs to: the working directory its client says it works in.

Coding agents tell the model where they run, and so tell the proxy: Claude Code's system prompt has
" - Primary working directory: /path" (older versions: "Working directory: /path" in an ``<env>`` block),
Codex sends ``<environment_context><cwd>/path</cwd>…`` as an early input message, other clients put a
"Current working directory: …" line in their system or developer message. Memory stores that path with
each item (:attr:`MemoryItem.project`) and ranks the current project's items above the rest of the
tenant's memory, as it does the current session's (``memory.project_weight``): a new session in the same
repository finds what earlier sessions there said before what other repositories' sessions said.

Only the instructions (system / developer / ``instructions``) and the first few messages are read: that
is where clients put their environment, and a working directory named later in the conversation (a
tool's output, a file being edited) is content, not where the client runs.
"""

from __future__ import annotations

import re
from typing import Any

# "Primary working directory: /x", "Working directory: /x", "**Working directory**: `/x`",
# "Current working directory: /x" at the start of a line (after list or quote marks)
_WORKDIR = re.compile(r"^[ \t>*\-]*(?:primary |current )?working directory\**:\**[ \t]*`?([^\s`][^\n`]*?)`?[ \t]*$",
                      re.I | re.M)
_CWD_TAG = re.compile(r"<cwd>\s*([^<\n]+?)\s*</cwd>")
EARLY_MESSAGES = 5  # the first messages that may carry the client's environment (Codex: its third or so)
MAX_CHARS = 60_000  # of each text searched: the environment is in the first part of a message
MAX_PROJECT = 300


def _texts(content: Any) -> list[str]:
    """The text parts of a message's content (a string, or a list of typed blocks)."""
    if isinstance(content, str):
        return [content]
    out = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
    return out


def _normalise(path: str) -> str | None:
    p = path.strip().strip("'\"").strip()
    if len(p) > 1:
        p = p.rstrip("/\\")
    if not p or len(p) > MAX_PROJECT or p.lower() in ("none", "null", "unknown", "n/a"):
        return None
    return p


def find_project(text: str) -> str | None:
    """The working directory a text names (see the module docstring), else None."""
    text = text[:MAX_CHARS]
    if "<cwd>" in text:
        m = _CWD_TAG.search(text)
        if m and (p := _normalise(m.group(1))):
            return p
    if "irectory" in text:
        for m in _WORKDIR.finditer(text):
            if p := _normalise(m.group(1)):
                return p
    return None


def instruction_texts(body: dict[str, Any]) -> list[str]:
    """Where a request's client describes its environment, in the order searched: the system prompt or
    instructions, then the first messages (system, developer and user alike)."""
    out = _texts(body.get("system")) + _texts(body.get("instructions"))
    msgs = body.get("messages")
    if not isinstance(msgs, list):
        inp = body.get("input")
        msgs = inp if isinstance(inp, list) else []
    for m in msgs[:EARLY_MESSAGES]:
        if isinstance(m, dict) and m.get("role") in ("system", "developer", "user"):
            out += _texts(m.get("content"))
    return out


def project_of(body: Any) -> str | None:
    """The project (working directory) a request body says its client works in, else None."""
    if not isinstance(body, dict):
        return None
    return next((p for text in instruction_texts(body) if (p := find_project(text))), None)


NOTE = "memory_project"  # ctx.notes: the request's project, worked out once (the stage, then the turn)


def request_project(ctx) -> str | None:
    """The project of the request ``ctx`` (its decoded body, ``ctx.original``), worked out once."""
    got = ctx.notes.get(NOTE, False)
    if got is False:
        ctx.notes[NOTE] = got = project_of(ctx.original)
    return got
