"""How a version reads (the CLI's ``session show`` and the TUI's session view share it)."""

from __future__ import annotations

from typing import Any


def what(v: dict[str, Any]) -> str:
    """``compaction``, ``clearing``, ``compression``, ``rollback to v2``..."""
    if v.get("kind") == "rollback":
        return f"rollback to v{v.get('to')}"
    if v.get("trigger") == "compression":
        return "compression"  # its records live in clearing's namespace (so rollback turns them off), not its name
    return str(v.get("stage") or "?")


def changed(v: dict[str, Any], ids: int = 3) -> str:
    """What a decision changed: its message span or indices and its tool ids."""
    if v.get("kind") != "decision":
        return ""
    span = v.get("span")
    msgs = v.get("messages") or []
    if span:
        where = f"messages {span[0]}–{span[1]}"
    elif msgs:
        where = f"messages {','.join(map(str, msgs[:8]))}{'…' if len(msgs) > 8 else ''}"
    else:
        where = ""
    tids = v.get("tool_ids") or []
    tools = f"{len(tids)} tool ids ({', '.join(tids[:ids])}{'…' if len(tids) > ids else ''})" if tids else ""
    return " · ".join(x for x in (where, tools) if x)


def pin_text(p: dict[str, Any]) -> str:
    return f"#{p.get('id')} {p.get('kind')}:{p.get('value')}"
