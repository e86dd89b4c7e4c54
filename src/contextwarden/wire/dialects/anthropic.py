"""Anthropic Messages (``POST /v1/messages``): typed messages of content blocks, tool_use / tool_result."""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter
from typing import Any

import orjson

from ...models import anthropic as am
from ...models.base import ApiKind
from ...util import last_of
from ..conversation import Entry, ToolCall, side_of
from ..streams.anthropic import AnthropicAssembler
from ..validate import (
    Checkpoints,
    FactCache,
    Fold,
    Problem,
    aligned_raw,
    blank,
    blocks,
    copies_in_order,
    digest,
    dumps,
    last_role_changed,
    role_of,
    roles_of,
    same_bytes,
)
from .base import (
    MESSAGE_OVERHEAD,
    NO_PROVIDER,
    Counter,
    Dialect,
    NotInjectable,
    ProviderContext,
    has_cache_control,
    history_dicts,
    last_index,
    last_user_index,
    taking_over,
)

# context_management edits (Anthropic's context editing and compaction, beta context-management-2025-06-27
# and compact-2026-01-12), by what taking one over means (pipeline.provider_take_over)
CLEAR_TOOL_USES, CLEAR_THINKING, COMPACT = "clear_tool_uses_20250919", "clear_thinking_20251015", "compact_20260112"
_TAKEN_AS = {CLEAR_TOOL_USES: "clear_tool_uses", COMPACT: "compaction"}
MAX_BREAKPOINTS = 4
# Anthropic renders each tool_use and tool_result in a verbose markup of its own: fitted on the three
# Claude Code sessions in ../shared/eval/traces (950 consecutive requests, provider delta vs estimate
# delta), each costs about 86 provider tokens beyond its content, ~65 of ours before calibration.
ANTHROPIC_TOOL_OVERHEAD = 65
COUNT_TOKENS = "/count_tokens"  # the token count of a Messages body: ``/v1/messages/count_tokens``


class Anthropic(Dialect):
    kind = ApiKind.ANTHROPIC
    request_model = am.MessagesRequest
    message_model = am.Message
    assembler = AnthropicAssembler
    endpoint = ("api.anthropic.com", "/v1/messages")
    request_defaults = (("max_tokens", 1024),)
    system_key = "system"
    cache_breakpoints = True
    tool_frame = ANTHROPIC_TOOL_OVERHEAD
    thinking_dropped = True
    count_tokens = COUNT_TOKENS
    tool_results = "blocks"

    def serves(self, path: str, ollama: bool) -> bool:
        return path == "/v1/messages" or path.endswith("/anthropic/v1/messages")

    def known_host(self, host: str, hostport: str, proxy: Any, ollama: bool) -> bool:
        return host in proxy.anthropic_hosts or hostport in proxy.anthropic_hosts

    def object_entry(self, index: int, m: dict[str, Any], role: str) -> Entry:
        side = side_of(role)
        c = m.get("content")
        if not isinstance(c, list):
            return Entry(index, role, side, turn_start=side == "user")
        uses, results, other = [], [], False
        for b in c:
            t = b.get("type") if isinstance(b, dict) else None
            if t == "tool_use":
                uses.append(str(b.get("id", "")))
            elif t == "tool_result":
                results.append(str(b.get("tool_use_id", "")))
            else:
                other = True
        return Entry(index, role, side, tuple(uses), tuple(results), turn_start=side == "user" and other)

    def tool_calls(self, msgs: list[Any]) -> dict[str, ToolCall]:
        out: dict[str, ToolCall] = {}
        for i, m in enumerate(msgs):
            c = m.get("content") if isinstance(m, dict) else None
            for b in c if isinstance(c, list) else ():
                if isinstance(b, dict) and b.get("type") == "tool_use":
                    out.setdefault(str(b.get("id", "")), ToolCall(str(b.get("id", "")), str(b.get("name", "")), b.get("input"), i))
        return out

    def check(self, new: dict[str, Any], original: dict[str, Any], original_raw: list[bytes] | None = None,
              raw: list[bytes | None] | None = None, facts: FactCache | None = None,
              checkpoints: Checkpoints | None = None) -> list[Problem]:
        """``system`` and ``tools`` byte-equal to the original (they are the cached prefix); every
        ``tool_use`` in an assistant message answered by a ``tool_result`` in the immediately following
        user message, every ``tool_result`` answering a ``tool_use`` of the message just before it, ids
        unique; the first conversational message is ``user``; consecutive same-role messages only where
        the original had that kind of pair too; messages of any other role (``system`` mid-conversation,
        or a role we do not know) only as copies of the original's, in the original's order; no empty
        content, no empty or whitespace-only text block; the latest assistant message's
        ``thinking``/``redacted_thinking`` blocks identical to the original's, signatures included; at
        most 4 ``cache_control`` breakpoints over system + tools + messages; the last message's role
        unchanged."""
        problems = same_bytes("system", new, original) + same_bytes("tools", new, original)
        msgs = new.get("messages")
        orig_msgs: list[Any] = original["messages"] if isinstance(original.get("messages"), list) else []
        if not isinstance(msgs, list) or not msgs:
            return problems + [(("no-messages",), "`messages` is missing or empty")]
        f = _fold(msgs, _keys(msgs, orig_msgs, original_raw, raw), facts if facts is not None else FactCache(max_bytes=0),
                  checkpoints if checkpoints is not None else Checkpoints(size=0))
        found, others = f.problems, []
        if f.others_new or any(p[0][0] == "consecutive" for p in found):  # (Claude Code sends a system message: every request)
            orig_roles = roles_of(orig_msgs)
            pairs = frozenset(zip(orig_roles, orig_roles[1:]))
            found = [p for p in found if p[0][0] != "consecutive" or (p[0][1], p[0][1]) not in pairs]
            others = copies_in_order("anthropic", f.others_new,
                                     [m for m, r in zip(orig_msgs, orig_roles) if r not in ("user", "assistant")])
        problems += found
        problems += [(("unanswered", tid), f"tool_use {tid} in the last message has no tool_result") for tid in sorted(f.prev_uses)]
        problems += others
        problems += last_role_changed(msgs, orig_msgs)
        last, orig_last = _last_assistant(msgs), _last_assistant(orig_msgs)
        if last is not orig_last and dumps(_thinking(last)) != dumps(_thinking(orig_last)):
            problems.append((("thinking",), "the latest assistant message's thinking blocks differ from the original's"))
        n = f.bps + sum(1 for key in ("system", "tools") for b in blocks(new.get(key))
                        if isinstance(b, dict) and b.get("cache_control") is not None)
        if n > MAX_BREAKPOINTS:
            problems.append((("breakpoints", n), f"{n} cache_control breakpoints (at most {MAX_BREAKPOINTS})"))
        return problems

    def injectable(self, req: Any) -> None:
        msgs = req.messages
        i = last_user_index(msgs, lambda m: m.role)
        if i is None:
            raise NotInjectable("no user message")
        if any(has_cache_control(later.wire()) for later in msgs[i + 1:]):
            raise NotInjectable("a cache breakpoint follows the last user message")

    def inject(self, req: Any, block: str) -> str:
        """A text block appended to the last user message's content (a string content becomes
        ``[text, memory-text]``; tool_result blocks stay first, as the API wants)."""
        self.injectable(req)
        msgs = req.messages
        i = last_user_index(msgs, lambda m: m.role)
        m = msgs[i]
        old = [am.TextBlock(type="text", text=m.content)] if isinstance(m.content, str) else list(m.content)
        msgs[i] = m.model_copy(update={"content": old + [am.TextBlock(type="text", text=block)]})
        return f"messages[{i}] text block"

    def edited(self, m: Any, edit: dict[tuple[Any, ...], Any]) -> Any:
        content = []
        for bi, b in enumerate(m.content):
            if ("r", bi) in edit:
                b = b.model_copy(update={"content": edit[("r", bi)]})
            elif ("i", bi) in edit:
                b = b.model_copy(update={"input": edit[("i", bi)]})
            if ("c", bi) in edit:
                b = b.model_copy(update={"cache_control": edit[("c", bi)]})
            content.append(b)  # (an unchanged block is shared: typed blocks are frozen)
        return m.model_copy(update={"content": content})

    def locked_inputs(self, req: Any, history: Any = None) -> set[int]:
        """The latest assistant message, and those of the current turn (from the latest user message
        that is not only tool results) that carry thinking blocks. ``history``: the request's History,
        whose messages remember what this reads of each (a repeat reads only its new messages)."""
        msgs = req.messages
        kinds = history.memos(msgs, _LOCKS, _lock_kind) if history is not None else list(map(_lock_kind, msgs))
        turn_start = last_of(kinds, "u", 0)
        last = max(last_of(kinds, "a", -1), last_of(kinds, "t", -1))
        locked = {last} if last >= 0 else set()
        return locked | {i for i in range(turn_start, len(msgs)) if kinds[i] == "t"}

    def turn_breakpoints(self, req: Any, history: Any, turns: int, boundary: int) -> dict[int, dict[tuple[Any, ...], Any]]:
        msgs = req.messages
        facts = history.memos(msgs, _MARKS, _marks_of) if history is not None else list(map(_marks_of, msgs))
        return {i: {("c", len(msgs[i].content) - 1): EPHEMERAL}
                for i in turn_marks(facts, req.system, req.tools, turns, boundary) if not isinstance(msgs[i].content, str)}

    def text_of(self, m: Any) -> str:
        return am.message_text(m)

    def summary_message(self, text: str, cache_control: dict[str, Any] | None = None) -> am.Message:
        block = {"type": "text", "text": text} | ({"cache_control": cache_control} if cache_control else {})
        return am.Message.model_validate({"role": "user", "content": [block]})

    def error_answer(self, message: str, stream: bool, kind: str = "rate_limit") -> tuple[bytes, dict[str, str]]:
        err = orjson.dumps({"type": "error", "error": {"type": "rate_limit_error" if kind == "rate_limit" else "api_error",
                                                       "message": message}})
        if stream:  # what the client reads as a stream: one SSE `error` event carrying the same JSON
            return b"event: error\ndata: " + err + b"\n\n", {"content-type": "text/event-stream; charset=utf-8",
                                                             "cache-control": "no-cache"}
        return err, {"content-type": "application/json"}

    def auth_header(self, api_key: str) -> tuple[str, str]:
        return ("x-api-key", api_key)

    def reply(self, text: str) -> dict[str, Any]:
        return {"role": "assistant", "content": [{"type": "text", "text": text}] if text else []}

    def rewrite_text(self, m: am.Message, fn: Callable[[str], str | None]) -> am.Message | None:
        if m.role != "user":
            return None
        if isinstance(m.content, str):
            new = fn(m.content)
            return None if new is None else m.model_copy(update={"content": new})
        bs = [b.model_copy(update={"text": t}) if isinstance(b, am.TextBlock) and (t := fn(b.text)) is not None else b
              for b in m.content]
        return m.model_copy(update={"content": bs}) if any(a is not b for a, b in zip(bs, m.content)) else None

    def item_texts(self, m: Any, out: list[Any]) -> None:
        """Its text, or its blocks' texts (tool calls and results included) and, of two or more texts and
        tool calls, those together: the text ``memory_items`` stores for the message (no thinking)."""
        msg = m if isinstance(m, am.Message) else am.Message.model_validate(m)
        if isinstance(msg.content, str):
            out.append(msg.content)
            return
        texts = []
        for b in msg.content:
            if t := am.block_text(b):
                out.append(t)
                if isinstance(b, (am.TextBlock, am.ToolUseBlock)):  # a stored message's text (memory_items)
                    texts.append(t)
        if len(texts) > 1:
            out.append("\n".join(texts))

    def message_tokens(self, tc: Counter, m: dict[str, Any], enc: Any) -> int:
        return MESSAGE_OVERHEAD + tc._content(self, m.get("content"), enc)

    def memory_items(self, messages: Any, start_turn: int, clean_text: dict[int, str], add: Callable[..., None]) -> None:
        tool_names: dict[str, str] = {}
        for turn, raw, role in history_dicts(messages, start_turn):
            texts, results = [], []
            for b in am.Message.model_validate(raw).blocks():
                if isinstance(b, am.ToolUseBlock):
                    tool_names[b.id] = b.name
                    texts.append(am.block_text(b))
                elif isinstance(b, am.ToolResultBlock):
                    results.append(b)
                elif isinstance(b, am.TextBlock):
                    texts.append(b.text)
            add(clean_text.get(turn, "\n".join(t for t in texts if t)), turn, role, "message")
            for b in results:
                add(am.content_text(b.content), turn, "tool", "tool_result", tool_names.get(b.tool_use_id))

    def summary_request(self, auth: dict[str, Any], model: str, prompt: str, text: str, max_tokens: int) -> tuple[dict[str, Any], dict[str, Any]]:
        headers = {k: v for k, v in auth.items() if k != "anthropic-beta"} | {"content-type": "application/json"}
        headers.setdefault("anthropic-version", "2023-06-01")
        return {"model": model, "max_tokens": max_tokens, "system": prompt, "messages": [{"role": "user", "content": text}]}, headers

    def provider_context(self, body: dict[str, Any], known: tuple[int, int] | None = None,
                         take_over: frozenset[str] = frozenset()) -> ProviderContext:
        """``context_management.edits`` and the latest message holding a ``compaction`` block (the API
        drops every block before it, and the block goes back as it came)."""
        cm = body.get("context_management")
        edits: list[Any] = cm["edits"] if isinstance(cm, dict) and isinstance(cm.get("edits"), list) else []
        kinds = {e.get("type") for e in edits if isinstance(e, dict)}
        boundary = last_index(body.get("messages"), _holds_compaction, known)
        if not kinds and not boundary:
            return NO_PROVIDER
        taken = taking_over({v: k in kinds for k, v in _TAKEN_AS.items()}, take_over)
        update: tuple[Any, ...] = ()
        if taken and isinstance(cm, dict):  # the client's edit out; what is left of context_management (none: the field goes)
            kept = [e for e in edits if not (isinstance(e, dict) and _TAKEN_AS.get(str(e.get("type")), "") in taken)]
            update = (("context_management", {**cm, "edits": kept} if kept else None),)
        keep_all = any(isinstance(e, dict) and e.get("type") == CLEAR_THINKING and e.get("keep") in ("all", {"type": "all"})
                       for e in edits)
        return ProviderContext(clears_tool_uses=CLEAR_TOOL_USES in kinds and "clear_tool_uses" not in taken,
                               clears_thinking=CLEAR_THINKING in kinds, keeps_thinking=keep_all,
                               compacts=COMPACT in kinds and "compaction" not in taken,
                               boundary=boundary, dropped=max(0, boundary - 1), taken=taken, update=update)


def _holds_compaction(m: Any) -> bool:
    c = m.get("content") if isinstance(m, dict) else None
    return isinstance(c, list) and any(isinstance(b, dict) and b.get("type") == "compaction" for b in c)


# ---------------------------------------------------------------------------- the validator's walk


def _facts(m: dict[str, Any]) -> tuple[Any, ...]:
    """(role, content empty, block events in order, breakpoints) of one message.

    Block events: ("blank",) an empty text block, ("use", id), ("result", id)."""
    content = m.get("content")
    empty = content is None or (isinstance(content, str) and blank(content)) or (isinstance(content, list) and not content)
    events: list[tuple[Any, ...]] = []
    bps = 0
    for b in blocks(content):
        if not isinstance(b, dict):
            continue
        if b.get("cache_control") is not None:
            bps += 1
        t = b.get("type")
        if t == "text" and blank(b.get("text")):
            events.append(("blank",))
        elif t == "tool_use":
            events.append(("use", str(b.get("id", ""))))
        elif t == "tool_result":
            events.append(("result", str(b.get("tool_use_id", ""))))
            bps += sum(1 for x in blocks(b.get("content")) if isinstance(x, dict) and x.get("cache_control") is not None)
    return (m.get("role"), empty, tuple(events), bps)


def _last_assistant(msgs: list[Any]) -> Any:
    return next((m for m in reversed(msgs) if role_of(m) == "assistant"), None)


def _thinking(m: Any) -> list[Any]:
    """The thinking blocks of a message (None: none)."""
    return [b for b in blocks(m.get("content") if m else None)
            if isinstance(b, dict) and b.get("type") in ("thinking", "redacted_thinking")]


def _keys(msgs: list[Any], orig_msgs: list[Any], original_raw: list[bytes] | None, raw: list[bytes | None] | None) -> list[Any]:
    """Each message's bytes: the caller's, the original's where equal, else a dump (a message that is
    not an object keys as None: the same defect in the same place)."""
    if raw is not None and len(raw) == len(msgs) and None not in raw:
        return raw
    keys = aligned_raw(msgs, orig_msgs, original_raw)
    if raw is not None and len(raw) == len(msgs):
        keys = [r if r is not None else k for r, k in zip(raw, keys)]
    return [k if k is not None or type(m) is not dict else orjson.dumps(m, default=str) for k, m in zip(keys, msgs)]


def _fold(msgs: list[Any], keys: list[Any], facts: FactCache, checkpoints: Checkpoints) -> Fold:
    """The checks over every message, resumed from the latest checkpoint of the same messages."""
    begin, f = checkpoints.resume(keys)
    last = len(msgs) - 1
    for i in range(begin, len(msgs)):
        m = msgs[i]
        if i == last and i > 0:
            # also a checkpoint before the last message: a client that moves its cache breakpoint
            # changes that one in the next request, and the ones before stay
            checkpoints.save(keys[:i], f)
        if not isinstance(m, dict):
            f.problems.append((("not-object", i), f"messages[{i}] is not an object"))
            continue
        _step(f, i, m, facts.fact(m, _facts, keys[i]))
    checkpoints.save(keys, f, final=True)  # (check reads f, never changes it)
    return f


def _step(f: Fold, i: int, m: dict[str, Any], fact: tuple[Any, ...]) -> None:
    """One message's checks (``fact``: its :func:`_facts`) against the state before it (two consecutive
    messages of one role are reported here, and kept by ``check`` where the original has no such pair)."""
    role, empty, events, n_bp = fact
    pf = f.problems
    f.bps += n_bp
    if role not in ("user", "assistant"):
        f.others_new.append(m)
    elif not f.first_conv_checked:
        f.first_conv_checked = True
        if role != "user":
            pf.append((("first-role", role), f"the first user/assistant message is `{role}`, not `user`"))
    if f.prev_role is not None and role == f.prev_role and role in ("user", "assistant"):
        pf.append((("consecutive", role), f"two consecutive `{role}` messages at {i - 1},{i} (the original has none)"))
    if empty:
        pf.append((("empty", digest(m)), f"messages[{i}] ({role}) has empty content"))
    uses: set[str] = set()
    results: set[str] = set()
    for ev in events:
        if ev[0] == "blank":
            pf.append((("empty-text", digest(m)), f"messages[{i}] ({role}) has an empty text block"))
            continue
        tid = ev[1]
        if ev[0] == "use":
            if role != "assistant":
                pf.append((("use-role", tid), f"tool_use {tid} in a `{role}` message"))
            if tid in f.seen_use:
                pf.append((("dup-use", tid), f"tool_use id {tid} appears twice"))
            f.seen_use.add(tid)
            uses.add(tid)
            continue
        if tid in f.seen_result:
            pf.append((("dup-result", tid), f"tool_result for {tid} appears twice"))
        f.seen_result.add(tid)
        results.add(tid)
        if tid not in f.prev_uses:
            pf.append((("orphan-result", tid), f"tool_result {tid} in messages[{i}] does not answer a tool_use of the message before it"))
    for tid in sorted(f.prev_uses - results):  # pairing with the previous message
        pf.append((("unanswered", tid), f"tool_use {tid} is not answered by a tool_result in messages[{i}]"))
    if results and role != "user":
        pf.append((("result-role", role), f"tool_result in a `{role}` message at {i}"))
    f.prev_uses = uses
    f.prev_role = role


_LOCKS = ("anthropic", "locks")  # a message's memo: what locked_inputs reads of it
_MARKS = ("anthropic", "marks")  # a message's memo: what the breakpoints stage reads of it (_marks_of)
EPHEMERAL = {"type": "ephemeral"}


def turn_marks(facts: list[tuple[int, bool, bool]], system: Any, tools: Any, turns: int, boundary: int) -> list[int]:
    """The messages a breakpoint goes on: the last ``turns`` turn starts before the newest message and from
    ``boundary`` on (``facts``: each message's :func:`_marks_of`), those whose last block has none yet, while
    the request (its messages, ``system`` and ``tools``) holds fewer than the provider's ``MAX_BREAKPOINTS``."""
    marks = sum(map(_marked, blocks(system))) + sum(map(_marked, blocks(tools))) + sum(map(_COUNT, facts))
    out: list[int] = []
    seen = 0
    for i in range(len(facts) - 2, boundary - 1, -1):
        if seen == turns or marks + len(out) >= MAX_BREAKPOINTS:
            break
        _, last_marked, start = facts[i]
        if start:
            seen += 1
            if not last_marked:
                out.append(i)
    return out


def _marked(b: Any) -> int:
    """1 when a block (typed or a dict) carries a cache breakpoint."""
    return int((b.get("cache_control") if isinstance(b, dict) else getattr(b, "cache_control", None)) is not None)


def _type(b: Any) -> Any:
    return b.get("type") if isinstance(b, dict) else getattr(b, "type", None)


def _marks_of(m: Any) -> tuple[int, bool, bool]:
    """What the breakpoints stage reads of a message, typed or a dict: its breakpoints (tool results' own
    blocks included), whether its last block has one, whether a turn starts there (a user message that is
    not only tool results: ``tokens.starts_turn``)."""
    role, c = (m.get("role"), m.get("content")) if isinstance(m, dict) else (m.role, m.content)
    start = role == "user" and (not isinstance(c, list) or any(_type(b) != "tool_result" for b in c))
    if not isinstance(c, list) or not c:
        return 0, False, start
    n = sum(_marked(b) + sum(map(_marked, blocks(b.get("content") if isinstance(b, dict) else getattr(b, "content", None))))
            for b in c)
    return n, bool(_marked(c[-1])), start


_COUNT = itemgetter(0)


def with_turn_breakpoints(body: dict[str, Any], turns: int) -> dict[str, Any]:
    """A wire body with the breakpoints stage's marks; ``body`` when none (replay's oracle bills its plans as
    the proxy would send them)."""
    msgs = body.get("messages") or []
    facts = list(map(_marks_of, msgs))
    todo = [i for i in turn_marks(facts, body.get("system"), body.get("tools"), turns, 0) if isinstance(msgs[i].get("content"), list)]
    if not todo:
        return body
    msgs = list(msgs)
    for i in todo:
        c = msgs[i]["content"]
        msgs[i] = {**msgs[i], "content": [*c[:-1], {**c[-1], "cache_control": EPHEMERAL}]}
    return {**body, "messages": msgs}


def _lock_kind(m: Any) -> str:
    """What ``locked_inputs`` reads of a message: "u" a user message that starts a turn (not only tool
    results), "t" an assistant message with thinking blocks, "a" another assistant message, "" else."""
    c = m.content
    if m.role == "user":
        return "u" if isinstance(c, str) or any(getattr(b, "type", None) != "tool_result" for b in c) else ""
    if m.role == "assistant":
        return "t" if not isinstance(c, str) and any(getattr(b, "type", None) in ("thinking", "redacted_thinking") for b in c) else "a"
    return ""

