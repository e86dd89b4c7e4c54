"""Original vs rewritten request body, compared by message and by block (for the inspector).

Messages are aligned with ``difflib`` on a fingerprint of each message, so a compaction (many messages
become one summary) shows as removed messages beside an added one, and a cleared tool result or an
injected memory block shows inside the message that changed.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class Block:
    kind: str  # text, tool_use, tool_result, image, thinking, ...
    text: str
    state: str = "same"  # same, removed, added, changed


@dataclass
class DiffRow:
    kind: str  # same (collapsed run), changed, removed, added, field
    label: str
    left: list[Block] = field(default_factory=list)
    right: list[Block] = field(default_factory=list)
    count: int = 1  # messages in a collapsed run of unchanged ones


@dataclass
class BodyDiff:
    rows: list[DiffRow]
    messages_before: int
    messages_after: int
    changed: bool


def _as(blocks: list[Block], state: str) -> list[Block]:
    return [Block(b.kind, b.text, state) for b in blocks]


def _fp(x: Any) -> str:
    return hashlib.sha1(orjson.dumps(x, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()


def _short(s: Any, limit: int) -> str:
    s = s if isinstance(s, str) else orjson.dumps(s, default=str).decode()
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def block_text(b: Any, limit: int = 240) -> Block:
    """A one-line description of a content block (Anthropic or OpenAI shapes)."""
    if isinstance(b, str):
        return Block("text", _short(b, limit))
    if not isinstance(b, dict):
        return Block("?", _short(b, limit))
    t = str(b.get("type") or ("tool_calls" if "tool_calls" in b else "?"))
    if t in ("text", "input_text", "output_text"):
        return Block(t, _short(b.get("text", ""), limit))
    if t == "tool_use":
        return Block(t, _short(f"{b.get('name')}({b.get('id', '')}) {_short(b.get('input', {}), limit)}", limit))
    if t == "tool_result":
        content = b.get("content")
        if isinstance(content, list):
            content = " ".join(block_text(c, limit).text for c in content)
        return Block(t, _short(f"{b.get('tool_use_id', '')}: {content if content is not None else ''}", limit))
    if t in ("thinking", "redacted_thinking"):
        return Block(t, f"[{t}, {len(str(b.get('thinking') or b.get('data') or ''))} chars]")
    if t in ("image", "image_url", "input_image", "document"):
        return Block(t, f"[{t}]")
    if t in ("function_call", "function_call_output"):
        return Block(t, _short(f"{b.get('name', '')} {b.get('arguments') or b.get('output') or ''}", limit))
    return Block(t, _short({k: v for k, v in b.items() if k != "type"}, limit))


def message_blocks(m: Any, limit: int = 240) -> list[Block]:
    if not isinstance(m, dict):
        return [block_text(m, limit)]
    blocks: list[Block] = []
    content = m.get("content")
    if isinstance(content, list):
        blocks = [block_text(c, limit) for c in content]
    elif content is not None:
        blocks = [block_text(content, limit)]
    for tc in m.get("tool_calls") or []:  # OpenAI chat
        fn = tc.get("function", {}) if isinstance(tc, dict) else {}
        blocks.append(Block("tool_call", _short(f"{fn.get('name')}({tc.get('id', '')}) {fn.get('arguments', '')}", limit)))
    if not blocks and m.get("type"):  # a Responses API item that is not a message
        blocks = [block_text(m, limit)]
    return blocks


def _raw_blocks(m: Any) -> list[Any]:
    if isinstance(m, dict):
        content = m.get("content")
        if isinstance(content, str):  # the same as one text block, for comparing
            content = [{"type": "text", "text": content}]
        out = list(content) if isinstance(content, list) else ([content] if content is not None else [])
        return out + list(m.get("tool_calls") or [])
    return [m]


def _label(m: Any, i: int) -> str:
    role = (m.get("role") or m.get("type") or "?") if isinstance(m, dict) else "?"
    return f"{i + 1} {role}"


def body_messages(body: dict[str, Any] | None) -> list[Any]:
    if not isinstance(body, dict):
        return []
    for key in ("messages", "input"):
        v = body.get(key)
        if isinstance(v, list):
            return v
        if isinstance(v, str):
            return [{"role": "user", "content": v}]
    return []


def diff_bodies(original: dict[str, Any] | None, rewritten: dict[str, Any] | None, limit: int = 240,
                context: int | None = 0) -> BodyDiff:
    """Compare two bodies. ``rewritten=None`` means forwarded unchanged. A run of unchanged messages
    keeps ``context`` messages at each end and collapses the rest into one row (``None``: show all)."""
    original = original or {}
    after = rewritten if rewritten is not None else original
    rows: list[DiffRow] = []
    # top-level fields other than the messages: system, tools, parameters
    key = "messages" if "messages" in original or "messages" in after else "input"
    for k in sorted((set(original) | set(after)) - {key}):
        if original.get(k) != after.get(k):
            left = [Block(k, _short(original[k], limit), "removed")] if k in original else []
            right = [Block(k, _short(after[k], limit), "added")] if k in after else []
            rows.append(DiffRow("field", k, left, right))
    ma, mb = body_messages(original), body_messages(after)
    fa, fb = [_fp(m) for m in ma], [_fp(m) for m in mb]
    sm = difflib.SequenceMatcher(a=fa, b=fb, autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            c = i2 - i1 if context is None else context
            hide = i2 - i1 > 2 * c
            for i in range(i1, i2):
                if hide and i == i1 + c:  # the middle of a long unchanged run, collapsed into one row
                    rows.append(DiffRow("same", f"{i + 1}–{i2 - c}", count=i2 - i1 - 2 * c))
                if not hide or i < i1 + c or i >= i2 - c:
                    bl = message_blocks(ma[i], limit)
                    rows.append(DiffRow("same", _label(ma[i], i), bl, bl))
        elif op == "replace" and (i2 - i1) == (j2 - j1):
            rows += [_pair(ma[i], mb[j], i, j, limit) for i, j in zip(range(i1, i2), range(j1, j2))]
        else:
            rows += [DiffRow("removed", _label(ma[i], i), _as(message_blocks(ma[i], limit), "removed")) for i in range(i1, i2)]
            rows += [DiffRow("added", _label(mb[j], j), [], _as(message_blocks(mb[j], limit), "added")) for j in range(j1, j2)]
    return BodyDiff(rows=rows, messages_before=len(ma), messages_after=len(mb), changed=rewritten is not None and rewritten != original)


def _pair(a: Any, b: Any, i: int, j: int, limit: int) -> DiffRow:
    """Two messages at the same place that differ: align their blocks the same way."""
    ra, rb = _raw_blocks(a), _raw_blocks(b)
    ba, bb = message_blocks(a, limit), message_blocks(b, limit)
    if len(ba) != len(ra) or len(bb) != len(rb):  # shapes we summarise differently: whole message changed
        return DiffRow("changed", _label(a, i) if i == j else f"{i + 1}→{j + 1}", _as(ba, "changed"), _as(bb, "changed"))
    left: list[Block] = []
    right: list[Block] = []
    sm = difflib.SequenceMatcher(a=[_fp(x) for x in ra], b=[_fp(x) for x in rb], autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            left += ba[i1:i2]
            right += bb[j1:j2]
        else:  # replace, delete (nothing on the right) or insert (nothing on the left)
            left += _as(ba[i1:i2], "changed" if op == "replace" else "removed")
            right += _as(bb[j1:j2], "changed" if op == "replace" else "added")
    role_changed = isinstance(a, dict) and isinstance(b, dict) and a.get("role") != b.get("role")
    label = _label(a, i) if i == j and not role_changed else f"{_label(a, i)}→{_label(b, j)}"
    return DiffRow("changed", label, left, right)
