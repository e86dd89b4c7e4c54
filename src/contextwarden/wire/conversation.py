"""Walking a conversation the same way across the three APIs: roles, user turns, tool pairs, cuts.

The pruning stages (clearing, compaction) and their tests need the same few facts about a request's
history whatever API it came through:

- which entries open a tool call and which answer one (Anthropic ``tool_use``/``tool_result`` blocks,
  OpenAI chat ``tool_calls``/``role: tool`` messages, Responses ``*_call``/``*_call_output`` items);
- where a genuine user turn starts (a user message that is not only tool results);
- where the history may be cut without splitting a pair or leaving an assistant message first.

Everything here reads wire dicts (``model.wire()`` shapes, or ``ctx.original``) and never mutates them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..util.lru import BytesMemo
from ..util.redact import redact_field
from ..util.scrub import scrub_text

# a Responses input's items produced by the model (the assistant side of the conversation)
ASSISTANT_TYPES = frozenset({
    "reasoning", "function_call", "custom_tool_call", "computer_call", "local_shell_call", "web_search_call",
    "file_search_call", "code_interpreter_call", "image_generation_call", "mcp_call", "mcp_list_tools",
    "mcp_approval_request", "shell_call", "apply_patch_call",
})

#: Roles that carry instructions rather than conversation (kept or summarised verbatim, never dropped).
SYSTEM_ROLES = frozenset({"system", "developer"})

@dataclass(slots=True)
class Entry:
    """What the pruning stages need to know about one message (or Responses input item)."""

    index: int
    role: str  # "user", "assistant", "system", "developer", "tool", or whatever the client sent
    side: str  # "user" | "assistant" | "system": who produced it, for cut and alternation rules
    uses: tuple[str, ...] = ()  # tool-call ids this entry opens
    results: tuple[str, ...] = ()  # tool-call ids this entry answers
    turn_start: bool = False  # a user message with something besides tool results


def side_of(role: str) -> str:
    """Who produced a message of ``role``: "system", "assistant", or "user" (tool and unknown roles sit on
    the caller's side)."""
    if role in SYSTEM_ROLES:
        return "system"
    return "assistant" if role == "assistant" else "user"


def cut_points(es: list[Entry], lo: int, hi: int) -> list[int]:
    """Indices k in (lo, hi] where ``msgs[lo:k]`` can be replaced by one user summary message.

    A valid cut keeps every tool call with its answer (no pair crosses k) and puts an assistant-side
    entry at k (the summary is a user message, so the conversation keeps alternating and never starts
    with the assistant). In the Responses API an assistant group (reasoning + calls) is cut only at
    its start, so a reasoning item is never separated from the item it precedes.
    """
    n = len(es)
    hi = min(hi, n - 1)
    if hi <= lo:
        return []
    first_use: dict[str, int] = {}
    last_result: dict[str, int] = {}
    for e in es:
        for u in e.uses:
            first_use.setdefault(u, e.index)
        for res in e.results:
            last_result[res] = e.index
    # bad[k] > 0 when some pair has its call before k and its answer at or after k
    delta = [0] * (n + 2)
    for call_id, at in first_use.items():
        # a call with no answer in the history (the client's problem) pins nothing but must not be
        # separated from what follows it either: treat it as answered at the end
        r = last_result.get(call_id, n)
        if r > at:
            delta[at + 1] += 1
            delta[r + 1] -= 1
    out, run = [], 0
    for k in range(n + 1):
        run += delta[k]
        if lo < k <= hi and run == 0 and es[k].side == "assistant" and es[k - 1].side != "assistant":
            out.append(k)
    return out


# ---------------------------------------------------------------------------------------------------
# hashing: what "the same span" means across requests


def strip_cache_control(obj: Any, depth: int = 0) -> Any:
    """A copy without ``cache_control`` keys at message and block level (clients move breakpoints
    from request to request; the content they mark does not change)."""
    if depth > 3:
        return obj
    if isinstance(obj, dict):
        if "cache_control" not in obj and not any(isinstance(v, list) for v in obj.values()):
            return obj
        return {k: strip_cache_control(v, depth + 1) for k, v in obj.items() if k != "cache_control"}
    if isinstance(obj, list):
        return [strip_cache_control(v, depth + 1) for v in obj]
    return obj


# In compact JSON a key is `"name":` with unescaped quotes, which cannot occur inside a string value
# (quotes there are escaped), so this finds exactly the cache_control members (flat objects).
_CC_MEMBER = re.compile(rb',"cache_control":\{[^{}]*\}|"cache_control":\{[^{}]*\},?')


def canonical_bytes(m: Any) -> bytes:
    """Canonical bytes of a message for hashing: sorted keys, ``cache_control`` members removed."""
    data = orjson.dumps(m, option=orjson.OPT_SORT_KEYS)
    if b'"cache_control":' in data:
        data = _CC_MEMBER.sub(b"", data)
    return data


def digest_memo() -> BytesMemo:
    """A memo of message digests (a runtime's: ``runtime.memo("conversation.digests", digest_memo)``): a
    session's history is hashed again on every request (compaction's span hashes); short messages are
    cheaper to hash than to keep."""
    return BytesMemo(min_key=256)


def message_hash(m: Any, memo: BytesMemo | None = None) -> bytes:
    """16-byte digest of a message's content, breakpoints ignored."""
    data = canonical_bytes(m)
    if memo is None:
        return hashlib.blake2b(data, digest_size=16).digest()
    h: bytes = memo.get(data, lambda: hashlib.blake2b(data, digest_size=16).digest())
    return h


class SpanHasher:
    """Digests of ``msgs[:k]`` for growing k, hashing each message once (breakpoints ignored)."""

    def __init__(self, msgs: list[Any], memo: BytesMemo | None = None) -> None:
        self.msgs = msgs
        self.memo = memo
        self._h = hashlib.blake2b(digest_size=16)
        self._n = 0

    def at(self, k: int) -> str:
        if k < self._n:  # rare: an earlier cut asked after a later one
            h = hashlib.blake2b(digest_size=16)
            for m in self.msgs[:k]:
                h.update(message_hash(m, self.memo))
            return h.hexdigest()
        while self._n < k:
            self._h.update(message_hash(self.msgs[self._n], self.memo))
            self._n += 1
        return self._h.hexdigest()


# ---------------------------------------------------------------------------------------------------
# cache_control breakpoints


def count_breakpoints(obj: Any) -> int:
    """``cache_control`` markers in a body (system, tools, messages, blocks, tool_result content)."""
    return sum(1 for _ in breakpoint_ttls(obj))


def breakpoint_ttls(obj: Any, depth: int = 0) -> Iterator[str]:
    """The ttl of every breakpoint (``"5m"`` when not given)."""
    if depth > 6:
        return
    if isinstance(obj, dict):
        cc = obj.get("cache_control")
        if isinstance(cc, dict):
            yield str(cc.get("ttl", "5m"))
        for k, v in obj.items():
            if k != "cache_control" and isinstance(v, (dict, list)) and k not in ("input", "source"):
                yield from breakpoint_ttls(v, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            yield from breakpoint_ttls(v, depth + 1)


# ---------------------------------------------------------------------------------------------------
# tool results and their text


def result_text(content: Any) -> str:
    """Plain text of a tool result's content (string, or a list of text/image parts), images left out.

    The memory id of a cleared or compacted result is ``memory_id(result_text(content))``.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, str):
                parts.append(p)
            elif isinstance(p, dict) and isinstance(p.get("text"), str):
                parts.append(p["text"])
        return "\n".join(x for x in parts if x)
    if isinstance(content, dict) and isinstance(text := content.get("text"), str):
        return text
    return orjson.dumps(content).decode("utf-8", "replace")


def image_count(content: Any) -> int:
    if isinstance(content, list):
        return sum(1 for p in content if isinstance(p, dict) and str(p.get("type", "")).endswith("image")
                   or isinstance(p, dict) and p.get("type") == "image_url")
    return 0


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    input: Any
    index: int  # message index of the call


def maybe_json(v: Any) -> Any:
    if isinstance(v, str) and v[:1] in ("{", "["):
        try:
            return orjson.loads(v)
        except orjson.JSONDecodeError:
            return v
    return v


def input_hint(tool_input: Any, limit: int = 80) -> str:
    """The argument that says what a call was about (a path, a command, a pattern, a URL), its secrets
    redacted before it is cut (a stub, a summary, a compressed result's header quote it: a key cut in
    two or reflowed onto one line would no longer look like one)."""
    if isinstance(tool_input, dict):
        for key in ("file_path", "path", "notebook_path", "command", "cmd", "pattern", "query", "url", "prompt", "description"):
            v = tool_input.get(key)
            if isinstance(v, str) and v.strip():
                return shorten(scrub_text(v), limit)
            if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
                return shorten(scrub_text(" ".join(v)), limit)
        for k, v in tool_input.items():
            if isinstance(v, str) and v.strip():
                return shorten(redact_field(k, v) if isinstance(k, str) else scrub_text(v), limit)
        return ""
    if isinstance(tool_input, str):
        return shorten(scrub_text(tool_input), limit)
    return ""


def shorten(text: str, limit: int) -> str:
    """Whitespace collapsed, cut to ``limit`` characters with an ellipsis."""
    s = " ".join(text.split())
    return s if len(s) <= limit else s[: max(0, limit - 1)].rstrip() + "…"


# ---------------------------------------------------------------------------------------------------
# a neutral transcript for the summarisers


@dataclass(slots=True)
class Part:
    kind: str  # text | thinking | tool_use | tool_result | image | other
    text: str = ""
    tool: str | None = None
    tool_input: Any = None
    tool_id: str | None = None
    is_error: bool = False


@dataclass(slots=True)
class Turn:
    role: str
    parts: list[Part] = field(default_factory=list)


def _tool_part(kind: str, text: str, calls: dict[str, ToolCall], cid: Any, name: Any = None, is_error: bool = False) -> Part:
    """A tool call's or result's part, with the call's name and input when ``calls`` has it."""
    call = calls.get(cid) if isinstance(cid, str) else None
    return Part(kind, text, call.name if call else name, call.input if call else None, cid, is_error)


def transcript(msgs: list[Any], calls: dict[str, ToolCall]) -> list[Turn]:
    """The messages as role + typed parts, whatever the API (``calls``: the dialect's ``tool_calls``;
    ``Dialect.transcript`` finds them)."""
    out: list[Turn] = []
    for m in msgs:
        if isinstance(m, str):
            out.append(Turn("user", [Part("text", m)]))
            continue
        if not isinstance(m, dict):
            continue
        if m.get("type") not in (None, "message"):  # a Responses item other than a message
            t = str(m.get("type"))
            cid = m.get("call_id")
            if t.endswith("_output"):
                out.append(Turn("tool", [_tool_part("tool_result", result_text(m.get("output")), calls, cid)]))
            elif t.endswith("_call"):
                out.append(Turn("assistant", [_tool_part("tool_use", "", calls, cid, t)]))
            elif t == "reasoning":
                summ = m.get("summary")
                txt = "\n".join(s.get("text", "") for s in summ if isinstance(s, dict)) if isinstance(summ, list) else ""
                out.append(Turn("assistant", [Part("thinking", txt)]))
            else:
                out.append(Turn("assistant" if t in ASSISTANT_TYPES else "user", [Part("other", "")]))
            continue
        role = str(m.get("role", "user"))
        c = m.get("content")
        parts: list[Part] = []
        if isinstance(c, str):
            parts.append(Part("text", c))
        elif isinstance(c, list):
            for b in c:
                if isinstance(b, str):
                    parts.append(Part("text", b))
                    continue
                if not isinstance(b, dict):
                    continue
                bt = b.get("type")
                if bt in ("text", "input_text", "output_text") or (bt is None and isinstance(b.get("text"), str)):
                    parts.append(Part("text", str(b.get("text", ""))))
                elif bt == "thinking":
                    parts.append(Part("thinking", str(b.get("thinking", ""))))
                elif bt == "tool_use":
                    parts.append(Part("tool_use", "", str(b.get("name", "")), b.get("input"), str(b.get("id", ""))))
                elif bt == "tool_result":
                    parts.append(_tool_part("tool_result", result_text(b.get("content")), calls,
                                            str(b.get("tool_use_id", "")), None, bool(b.get("is_error"))))
                elif isinstance(bt, str) and ("image" in bt):
                    parts.append(Part("image"))
                else:
                    parts.append(Part("other"))
        if role == "tool":  # (OpenAI chat, Ollama)
            parts = [_tool_part("tool_result", "\n".join(p.text for p in parts if p.text), calls, m.get("tool_call_id"),
                                m.get("name"))]
        for tc in m.get("tool_calls") or []:
            if isinstance(tc, dict):
                call = calls.get(str(tc.get("id", "")))
                parts.append(Part("tool_use", "", call.name if call else None, call.input if call else None, tc.get("id")))
        out.append(Turn(role, parts))
    return out
