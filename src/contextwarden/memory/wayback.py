"""How a stub or a summary tells the model to get back what was taken out.

A way back the model cannot reach recovers nothing, and a tool offered to a client that cannot run it
breaks the client. So the wording follows what the session's client has: when the request's ``tools``
offer contextwarden's MCP recall tool (Claude Code shows it as ``mcp__contextwarden__recall``), the stub
names that tool with the id; otherwise it names ``contextwarden recall ID`` (an agent with a shell runs
it), and both say that re-running the tool works too. A stub's text must never change once sent (the
provider's prompt cache holds it), so the wording is decided once per session, at its first clearing,
and kept with the session's clearing records (state namespace ``clearing.recall``).
"""

from __future__ import annotations

import re
from typing import Any

NS = "clearing.recall"  # per session (clearing's session key): {"tool": name, or "" for the CLI}
_RECALL_TOOL = re.compile(r"contextwarden.*recall$")


def recall_tool_name(tools: Any) -> str:
    """The name under which ``tools`` (a request's, any API) offer the recall tool, or ""."""
    for t in tools if isinstance(tools, list) else ():
        if not isinstance(t, dict):
            continue
        fn = t.get("function")
        name = t.get("name") or (fn.get("name") if isinstance(fn, dict) else None)
        if isinstance(name, str) and _RECALL_TOOL.search(name):
            return name
    return ""


def recall_wording(ctx, state, key: str) -> str:
    """The session's way back ("" = the CLI), decided on first use and kept from then on."""
    rec = state.get(NS, key, None)
    if rec is None:
        rec = _first_wording(ctx)
        state.put(NS, key, rec)
    return rec.get("tool") or ""


def peek_wording(ctx, state, key: str) -> str:
    """What :func:`recall_wording` answers now, without deciding it for the session (nothing stored)."""
    return (state.get(NS, key, None) or _first_wording(ctx)).get("tool") or ""


def _first_wording(ctx) -> dict:
    tools = ctx.original.get("tools") if isinstance(ctx.original, dict) else None
    return {"tool": recall_tool_name(tools)}


def way_back(mid: str, how: str) -> str:
    """The closing words of a stub: how to get ``mid`` back."""
    if how:
        return f"call {how} with this id to get it back verbatim, or re-run the tool"
    return f"`contextwarden recall {mid}` prints it verbatim, or re-run the tool"
