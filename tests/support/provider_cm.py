"""The stand-in's side of the providers' own context management, as strict as the providers document it.

Shapes (docs/provider-context-management.md lists the sources): Anthropic's ``context_management.edits``
(``clear_tool_uses_20250919``, ``clear_thinking_20251015``: beta ``context-management-2025-06-27``;
``compact_20260112``: beta ``compact-2026-01-12``), its ``compaction`` blocks (the API drops every block
before the latest one; a block goes back as it came, ``content`` a non-empty string or null), the
answer's ``context_management.applied_edits`` and ``usage.iterations`` (a ``compaction`` entry is billed
on top of the top-level fields); OpenAI Responses' ``context_management: [{"type": "compaction",
"compact_threshold": n}]``, ``compaction`` items (``encrypted_content`` opaque, sent back verbatim),
``compaction_trigger`` (the final input item) and ``POST /v1/responses/compact`` (``object:
"response.compaction"``: the user messages, then one compaction item).

The stand-in remembers every compaction it issued (``StandIn.compactions``: its opaque part -> the block
or item as issued) and, strict, rejects one that comes back changed.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

CONTEXT_BETA, COMPACT_BETA = "context-management-2025-06-27", "compact-2026-01-12"
CLEAR_TOOL_USES, CLEAR_THINKING, COMPACT = "clear_tool_uses_20250919", "clear_thinking_20251015", "compact_20260112"
COMPACT_MIN, COMPACT_DEFAULT, CLEAR_DEFAULT, KEEP_DEFAULT = 50_000, 150_000, 100_000, 3
SUMMARY = "Summary of the conversation so far (stand-in compaction)."


def _tokens(obj: Any) -> int:
    return max(1, len(json.dumps(obj)) // 4)


def _int_of(d: Any, kind: str) -> int | None:
    """``{"type": kind, "value": n}`` -> n; None when absent; -1 when malformed."""
    if d is None:
        return None
    if not isinstance(d, dict) or d.get("type") != kind or not isinstance(d.get("value"), int) or isinstance(d.get("value"), bool):
        return -1
    return d["value"]


def _edit_problems(i: int, e: Any, betas: set[str]) -> list[str]:
    at = f"context_management.edits.{i}"
    if not isinstance(e, dict):
        return [f"{at}: Input should be an object"]
    t: Any = e.get("type")
    need = {CLEAR_TOOL_USES: CONTEXT_BETA, CLEAR_THINKING: CONTEXT_BETA, COMPACT: COMPACT_BETA}.get(t)
    if need is None:
        return [f"{at}.type: Input tag '{t}' found using 'type' does not match any of the expected tags"]
    out = [] if need in betas else [f"{at}: the `{t}` edit requires the beta header `{need}`"]
    allowed = {CLEAR_TOOL_USES: {"type", "trigger", "keep", "clear_at_least", "exclude_tools", "clear_tool_inputs"},
               CLEAR_THINKING: {"type", "keep"},
               COMPACT: {"type", "trigger", "pause_after_compaction", "instructions"}}[t]
    out += [f"{at}.{k}: Extra inputs are not permitted" for k in e if k not in allowed]
    if t == CLEAR_TOOL_USES:
        trig = e.get("trigger")
        if trig is not None and _int_of(trig, "input_tokens") == -1 and _int_of(trig, "tool_uses") == -1:
            out.append(f"{at}.trigger: expected {{type: input_tokens | tool_uses, value: int}}")
        if _int_of(e.get("keep"), "tool_uses") == -1:
            out.append(f"{at}.keep: expected {{type: tool_uses, value: int}}")
        if _int_of(e.get("clear_at_least"), "input_tokens") == -1:
            out.append(f"{at}.clear_at_least: expected {{type: input_tokens, value: int}}")
        ex = e.get("exclude_tools")
        if ex is not None and not (isinstance(ex, list) and all(isinstance(x, str) for x in ex)):
            out.append(f"{at}.exclude_tools: Input should be a valid list of strings")
    elif t == CLEAR_THINKING:
        keep = e.get("keep")
        if keep is not None and keep != "all" and keep != {"type": "all"} and _int_of(keep, "thinking_turns") in (-1, None):
            out.append(f"{at}.keep: expected 'all' or {{type: thinking_turns, value: int}}")
    else:
        trig = _int_of(e.get("trigger"), "input_tokens")
        if trig == -1:
            out.append(f"{at}.trigger: expected {{type: input_tokens, value: int}}")
        elif trig is not None and trig < COMPACT_MIN:
            out.append(f"{at}.trigger.value: Input should be greater than or equal to {COMPACT_MIN}")
        if "pause_after_compaction" in e and not isinstance(e["pause_after_compaction"], bool):
            out.append(f"{at}.pause_after_compaction: Input should be a valid boolean")
    return out


def anthropic_problems(si, body: dict, beta: str) -> list[str]:
    """``context_management`` and the ``compaction`` blocks of a Messages request."""
    out: list[str] = []
    betas = {b.strip() for b in (beta or "").split(",") if b.strip()}
    cm = body.get("context_management")
    if cm is not None:
        edits = cm.get("edits") if isinstance(cm, dict) else None
        if not isinstance(edits, list):
            out.append("context_management.edits: Field required")
        else:
            types = [e.get("type") for e in edits if isinstance(e, dict)]
            if len(set(types)) != len(types):
                out.append("context_management.edits: each edit type may appear once")
            for i, e in enumerate(edits):
                out += _edit_problems(i, e, betas)
    for i, m in enumerate(body.get("messages") or []):
        c = m.get("content") if isinstance(m, dict) else None
        for j, b in enumerate(c if isinstance(c, list) else []):
            if not isinstance(b, dict) or b.get("type") != "compaction":
                continue
            at = f"messages.{i}.content.{j}"
            if m.get("role") != "assistant":
                out.append(f"{at}: `compaction` blocks are only allowed in assistant messages")
            if b.get("content") is not None and (not isinstance(b.get("content"), str) or not b["content"]):
                out.append(f"{at}.content: a compaction block's content is a non-empty string or null")
            issued = si.compactions.get(b.get("encrypted_content"))
            if issued is not None and {k: v for k, v in b.items() if k != "cache_control"} != issued:
                out.append(f"{at}: the compaction block was modified; send it back as it was returned")
            elif issued is None and b.get("encrypted_content") is not None:
                out.append(f"{at}.encrypted_content: invalid compaction block")
    return out


def responses_problems(si, body: dict) -> list[str]:
    """``context_management`` and the compaction items of a Responses (or /responses/compact) request."""
    out: list[str] = []
    cm = body.get("context_management")
    if cm is not None:
        if not isinstance(cm, list):
            out.append("context_management: Input should be a valid list")
        else:
            for i, e in enumerate(cm):
                if not isinstance(e, dict) or e.get("type") != "compaction":
                    out.append(f"context_management[{i}].type: only 'compaction' is supported")
                elif not isinstance(e.get("compact_threshold"), int) or e["compact_threshold"] <= 0:
                    out.append(f"context_management[{i}].compact_threshold: a positive integer is required")
    items: list[Any] = body["input"] if isinstance(body.get("input"), list) else []
    for i, it in enumerate(items):
        t = it.get("type") if isinstance(it, dict) else None
        if t == "compaction_trigger" and i != len(items) - 1:
            out.append(f"input[{i}]: compaction_trigger must be the final input item")
        if t == "compaction":
            issued = si.compactions.get(it.get("encrypted_content"))
            if issued is None:
                out.append(f"input[{i}].encrypted_content: invalid encrypted content")
            elif any(it.get(k) != v for k, v in issued.items() if k in ("encrypted_content", "id")):
                out.append(f"input[{i}]: the compaction item was modified")
    return out


# -- answers ---------------------------------------------------------------------------------


@dataclass
class Managed:
    """What the provider's own context management did to one Messages request."""

    dropped: int = 0  # estimated tokens before the latest compaction block (the API drops them)
    block: dict | None = None  # a new compaction block, first in the answer
    compaction_usage: dict | None = None  # its ``usage.iterations`` entry
    applied_edits: list[dict] = field(default_factory=list)
    cleared: int = 0  # input tokens the edits cleared
    paused: bool = False  # pause_after_compaction: the answer is the compaction block only


def _issue(si, obj: dict, key: str) -> dict:
    si.compactions[obj[key]] = dict(obj)
    return obj


def anthropic_managed(si, body: dict, est: int) -> Managed:
    """Drop what precedes the latest compaction block, clear tool uses above the edit's trigger, and
    compact above the compaction edit's trigger (``est``: the request's estimated tokens)."""
    msgs = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    last = max((i for i, m in enumerate(msgs) if isinstance(m.get("content"), list)
                and any(isinstance(b, dict) and b.get("type") == "compaction" for b in m["content"])), default=-1)
    g = Managed(dropped=_tokens(msgs[:last]) if last > 0 else 0)
    est -= g.dropped
    cm = body.get("context_management")
    edits = {e.get("type"): e for e in (cm.get("edits") or []) if isinstance(e, dict)} if isinstance(cm, dict) else {}
    if (e := edits.get(CLEAR_TOOL_USES)) is not None:
        trig = e.get("trigger") or {"type": "input_tokens", "value": CLEAR_DEFAULT}
        results = [(i, b) for i, m in enumerate(msgs) if i > last and isinstance(m.get("content"), list)
                   for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]
        over = est > trig["value"] if trig.get("type") == "input_tokens" else len(results) > trig["value"]
        keep = (e.get("keep") or {}).get("value", KEEP_DEFAULT)
        gone = results[: max(0, len(results) - keep)] if over else []
        if gone:
            g.cleared = sum(_tokens(b.get("content")) for _, b in gone)
            g.applied_edits.append({"type": CLEAR_TOOL_USES, "cleared_tool_uses": len(gone), "cleared_input_tokens": g.cleared})
    if (e := edits.get(COMPACT)) is not None:
        trig = (e.get("trigger") or {}).get("value", COMPACT_DEFAULT)
        if est - g.cleared > trig:
            enc = "standin-cmp-" + secrets.token_hex(12)
            g.block = _issue(si, {"type": "compaction", "content": SUMMARY, "encrypted_content": enc}, "encrypted_content")
            g.compaction_usage = {"type": "compaction", "input_tokens": est - g.cleared, "output_tokens": _tokens(SUMMARY),
                                  "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
            g.paused = bool(e.get("pause_after_compaction"))
            g.dropped += est - g.cleared - _tokens(SUMMARY) - _tokens(msgs[-1:])  # (sampled on the summary onwards)
    return g


def iterations(g: Managed, usage: dict) -> list[dict | None]:
    """``usage.iterations``: the compaction, then the sampling whose counts the top-level fields repeat."""
    keys = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    return [g.compaction_usage, {"type": "message", **{k: usage.get(k, 0) for k in keys}}]


def compaction_item(si) -> dict:
    """A new Responses compaction item (opaque: the stand-in checks it comes back unchanged)."""
    return _issue(si, {"type": "compaction", "id": "cmp_" + secrets.token_hex(8),
                       "encrypted_content": "gAAA" + secrets.token_hex(24)}, "encrypted_content")


def responses_compacts(body: dict, est: int) -> bool:
    """Whether a Responses request is compacted: a ``compaction_trigger`` last, or above a
    ``compact_threshold``."""
    items: list[Any] = body["input"] if isinstance(body.get("input"), list) else []
    if items and isinstance(items[-1], dict) and items[-1].get("type") == "compaction_trigger":
        return True
    cm = body.get("context_management")
    return isinstance(cm, list) and any(isinstance(e, dict) and e.get("type") == "compaction"
                                        and est > int(e.get("compact_threshold") or 0) for e in cm)


def compacted_response(si, body: dict, usage: dict) -> dict:
    """``POST /v1/responses/compact``'s answer: the user messages, then one compaction item."""
    items: list[Any] = body["input"] if isinstance(body.get("input"), list) else []
    users = [it for it in items if isinstance(it, dict) and it.get("role") == "user"]
    return {"id": "resp_" + secrets.token_hex(8), "object": "response.compaction", "created_at": 0,
            "output": [*users, compaction_item(si)], "usage": usage}
