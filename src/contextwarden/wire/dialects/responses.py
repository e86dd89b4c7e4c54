"""OpenAI Responses (``/v1/responses``, Codex): an ``input`` list of items (messages, ``*_call`` and
``*_call_output`` items, reasoning); items stay the client's dicts (no typed history)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import orjson

from ...models import openai_responses as orr
from ...models.base import ApiKind
from ..conversation import ASSISTANT_TYPES, Entry, ToolCall, maybe_json, side_of
from ..streams.openai_responses import ResponsesAssembler
from ..validate import Problem, digest, dumps, same_bytes
from .base import (
    BLOCK_OVERHEAD,
    CHARS_PER_TOKEN,
    MESSAGE_OVERHEAD,
    NO_PROVIDER,
    TOOL_CALL_OVERHEAD,
    Counter,
    Dialect,
    NotInjectable,
    ProviderContext,
    history_dicts,
    last_index,
    rewrite_parts,
    taking_over,
)
from .openai_chat import Chat

_CALL_OUTPUT = {"function_call_output": "function_call", "custom_tool_call_output": "custom_tool_call"}


class Responses(Chat):
    """(Its error answers are Chat Completions' own: the same OpenAI error object.)"""

    kind = ApiKind.OPENAI_RESPONSES
    history_key = "input"
    request_model = orr.ResponsesRequest
    message_model = None
    assembler = ResponsesAssembler
    endpoint = ("api.openai.com", "/v1/responses")
    system_key = "instructions"
    websocket = True
    tool_results = "items"
    summary_message = Dialect.summary_message  # (a plain user item)

    def serves(self, path: str, ollama: bool) -> bool:
        # (Codex signed in with a ChatGPT plan uses the second; /responses/compact, Codex's own
        # compaction request, is neither and passes untouched)
        return path.endswith("/v1/responses") or path.endswith("/backend-api/codex/responses")

    def object_entry(self, index: int, m: dict[str, Any], role: str) -> Entry:
        t = m.get("type")
        if t is None or t == "message":
            side = side_of(role)
            return Entry(index, role, side, turn_start=side == "user")
        cid = m.get("call_id")
        if t.endswith("_output"):
            return Entry(index, "tool", "user", results=(cid,) if isinstance(cid, str) else ())
        if t in ASSISTANT_TYPES or t.endswith("_call"):
            # server-side calls (web_search_call...) carry no call_id: nothing for the client to answer
            opens = (cid,) if isinstance(cid, str) and t.endswith("_call") else ()
            return Entry(index, "assistant", "assistant", uses=opens)
        return Entry(index, str(t), "user")

    def tool_calls(self, msgs: list[Any]) -> dict[str, ToolCall]:
        out: dict[str, ToolCall] = {}
        for i, m in enumerate(msgs):
            t = m.get("type") if isinstance(m, dict) else None
            if isinstance(t, str) and t.endswith("_call") and isinstance(m.get("call_id"), str):
                args = m.get("arguments", m.get("input", m.get("action")))
                out.setdefault(m["call_id"], ToolCall(m["call_id"], str(m.get("name", t)), maybe_json(args), i))
        return out

    def check(self, new: dict[str, Any], original: dict[str, Any], *_: Any) -> list[Problem]:
        """``instructions`` and ``tools`` unchanged; every ``function_call_output`` (and
        ``custom_tool_call_output``) ``call_id`` issued by an earlier call item; items the server
        encrypted (``reasoning``, Codex's ``compaction`` items: anything with ``encrypted_content``)
        byte-identical to one of the original's, or gone; a reasoning item and the item it precedes (the
        call or message it was produced with) kept or dropped together, and still adjacent."""
        problems: list[Problem] = same_bytes("instructions", new, original) + same_bytes("tools", new, original)
        inp = new.get("input")
        if isinstance(inp, str) or inp is None:
            if inp is None and original.get("input") is not None:
                problems.append((("no-input",), "`input` was removed"))
            return problems
        if not isinstance(inp, list):
            return problems + [(("bad-input",), "`input` is neither a string nor a list")]
        calls: set[tuple[str, str]] = set()
        outputs: set[str] = set()
        for i, item in enumerate(inp):
            t = item.get("type") if isinstance(item, dict) else None
            if t in ("function_call", "custom_tool_call"):
                calls.add((t, str(item.get("call_id", ""))))
            elif t in _CALL_OUTPUT:
                cid = str(item.get("call_id", ""))
                if (_CALL_OUTPUT[t], cid) not in calls:
                    problems.append((("orphan-result", cid), f"input[{i}] {t} {cid} has no earlier {_CALL_OUTPUT[t]}"))
                if cid in outputs:
                    problems.append((("dup-result", cid), f"{t} for {cid} appears twice"))
                outputs.add(cid)
            elif isinstance(item, dict) and "role" in item and t in (None, "message"):
                c = item.get("content")
                if c is None or (isinstance(c, list) and not c):
                    problems.append((("empty", digest(item)), f"input[{i}] ({item.get('role')}) has empty content"))
        orig = original.get("input")
        if isinstance(orig, list) and any(isinstance(it, dict) and (it.get("type") == "reasoning" or "encrypted_content" in it)
                                          for it in orig + inp):
            problems += _encrypted_items(inp, orig)
        return problems

    def injectable(self, req: Any) -> None:
        inp = req.input
        if isinstance(inp, str):
            return
        if not isinstance(inp, list) or not inp:
            raise NotInjectable("no input")
        last = inp[-1]
        if not isinstance(last, str) and (not isinstance(last, dict) or last.get("role") != "user"
                                          or last.get("type", "message") != "message"):
            raise NotInjectable("the last input item is not a user message (tool loop)")

    def inject(self, req: Any, block: str) -> str:
        """Appended to a string ``input``, or to the last input item when it is a user message."""
        self.injectable(req)
        inp = req.input
        if isinstance(inp, str):
            req.input = inp.rstrip() + "\n\n" + block
            return "input"
        last = inp[-1]
        # a new list: the model's list may be the very list of ctx.original, which is never mutated
        if isinstance(last, str):
            req.input = inp[:-1] + [last.rstrip() + "\n\n" + block]
            return f"input[{len(inp) - 1}]"
        c = last.get("content")
        if isinstance(c, list):
            new = {**last, "content": list(c) + [{"type": "input_text", "text": block}]}
        elif isinstance(c, str):
            new = {**last, "content": c.rstrip() + "\n\n" + block}
        else:
            raise NotInjectable("the last user message's content has an unknown shape")
        req.input = inp[:-1] + [new]
        return f"input[{len(inp) - 1}]"

    def text_of(self, m: Any) -> str:
        return orr.item_text(m)

    def reply(self, text: str) -> dict[str, Any]:
        return {"role": "assistant", "output": [{"type": "message", "role": "assistant",
                                                 "content": [{"type": "output_text", "text": text}]}]}

    def answer_messages(self, message: dict[str, Any]) -> list[Any]:
        """A response's output items (messages, calls, reasoning): each an entry of the next ``input``."""
        out = message.get("output")
        return [o for o in out if isinstance(o, dict)] if isinstance(out, list) else []

    def rewrite_text(self, it: Any, fn: Callable[[str], str | None]) -> Any:
        if isinstance(it, str):  # the ``input`` string, or a bare string item: the user's
            return fn(it)
        if isinstance(it, dict) and it.get("role") == "user" and it.get("type") in (None, "message"):
            c = rewrite_parts(it.get("content"), fn, ("input_text", "text"))
            return None if c is None else {**it, "content": c}
        return None

    def item_texts(self, m: Any, out: list[Any]) -> None:
        if t := orr.item_text(m.wire() if hasattr(m, "wire") else m):
            out.append(t)

    def message_tokens(self, tc: Counter, item: dict[str, Any], enc: Any) -> int:
        t = item.get("type")
        if "role" in item and t in (None, "message"):
            return MESSAGE_OVERHEAD + tc._content(self, item.get("content"), enc)
        if t in ("function_call", "custom_tool_call"):
            return TOOL_CALL_OVERHEAD + tc._text(item.get("name"), enc) + tc._text(item.get("arguments", item.get("input")), enc)
        if isinstance(t, str) and t.endswith("_output"):
            return TOOL_CALL_OVERHEAD + tc._content(self, item.get("output"), enc)
        if t == "reasoning":
            n = BLOCK_OVERHEAD + sum(tc._text(s.get("text"), enc) for s in item.get("summary") or [] if isinstance(s, dict))
            if isinstance(item.get("encrypted_content"), str):
                n += math.ceil(len(item["encrypted_content"]) / CHARS_PER_TOKEN / 2)
            return n
        return tc._block(self, item, enc)

    def memory_items(self, items: Any, start_turn: int, clean_text: dict[int, str], add: Callable[..., None]) -> None:
        tool_names: dict[str, str] = {}
        for turn, item, role in history_dicts([items] if isinstance(items, str) else items, start_turn, "assistant"):
            t = item.get("type") or ("message" if "role" in item else None)
            if t == "reasoning":
                continue
            if t and t.endswith("_call") and item.get("call_id"):
                tool_names[item["call_id"]] = item.get("name") or t.removesuffix("_call")
            if t and t.endswith("_call_output"):
                out = item.get("output")
                text = out if isinstance(out, str) else orr.item_text(item) or (orjson.dumps(out).decode() if out is not None else "")
                add(clean_text.get(turn, text), turn, "tool", "tool_result", tool_names.get(item.get("call_id", "")))
            else:
                add(clean_text.get(turn, orr.item_text(item)), turn, role if t == "message" else "assistant", "message")

    def summary_route(self, path: str) -> tuple[str, ApiKind]:
        """A summary is asked of the same provider's Chat Completions endpoint (one answer, no items)."""
        return (path[: -len("/responses")] + "/chat/completions" if path.endswith("/responses") else "/v1/chat/completions",
                ApiKind.OPENAI_CHAT)

    def provider_context(self, body: dict[str, Any], known: tuple[int, int] | None = None,
                         take_over: frozenset[str] = frozenset()) -> ProviderContext:
        """``context_management`` entries of type ``compaction`` (``compact_threshold``), an on-demand
        ``compaction_trigger`` (the last input item: never taken over, the client asked for it now), and
        the latest compaction item (kept byte-exact, with all before it)."""
        cm = body.get("context_management")
        auto = isinstance(cm, list) and any(isinstance(e, dict) and e.get("type") == "compaction" for e in cm)
        items = body.get("input")
        boundary = last_index(items, _compaction_item, known)
        now = isinstance(items, list) and bool(items) and isinstance(items[-1], dict) and items[-1].get("type") == "compaction_trigger"
        if not auto and not boundary and not now:
            return NO_PROVIDER
        taken = taking_over({"compaction": auto}, take_over)
        update: tuple[Any, ...] = ()
        if taken and isinstance(cm, list):
            kept = [e for e in cm if not (isinstance(e, dict) and e.get("type") == "compaction")]
            update = (("context_management", kept or None),)
        return ProviderContext(compacts=(auto and not taken) or now, boundary=boundary, taken=taken, update=update)


def _compaction_item(it: Any) -> bool:
    """The provider's compaction in the history: ``compaction`` items (``encrypted_content``: the summary
    the server made; Codex's ``compaction_summary`` too), not the ``compaction_trigger`` that asks for one."""
    return isinstance(it, dict) and isinstance(it.get("type"), str) and it["type"].startswith("compaction") \
        and it["type"] != "compaction_trigger"


def _item_key(item: Any) -> Any:
    """What identifies an input item across a rewrite: a call and its output by ``call_id`` (clearing
    edits their arguments and output), an item with an ``id`` by it, anything else by its bytes."""
    if not isinstance(item, dict):
        return ("value", dumps(item))
    t = item.get("type")
    cid = item.get("call_id")
    if isinstance(t, str) and isinstance(cid, str) and (t.endswith("_call") or t.endswith("_call_output")):
        return (t, cid)
    if isinstance(item.get("id"), str):
        return (t, "id", item["id"])
    return ("bytes", dumps(item))


def _encrypted_items(new: list[Any], orig: list[Any]) -> list[Problem]:
    """Encrypted items pass byte for byte; a reasoning item stays right before the item it precedes."""
    problems: list[Problem] = []
    originals = {dumps(it) for it in orig if isinstance(it, dict) and "encrypted_content" in it}
    where: dict[Any, int] = {}
    for i, it in enumerate(new):
        where.setdefault(_item_key(it), i)
        if isinstance(it, dict) and "encrypted_content" in it and dumps(it) not in originals:
            problems.append((("encrypted-altered", _item_key(it)),
                             f"input[{i}] ({it.get('type')}) carries encrypted content that is not the original's, byte for byte"))
    for j, it in enumerate(orig[:-1]):
        if not isinstance(it, dict) or it.get("type") != "reasoning":
            continue
        nxt = orig[j + 1]
        a, b = where.get(_item_key(it)), where.get(_item_key(nxt))
        if a is None and b is None:
            continue
        if a is None or b is None or b != a + 1:
            problems.append((("reasoning-split", _item_key(it)),
                             f"reasoning item {it.get('id') or j} was separated from the item it precedes "
                             f"({nxt.get('type') if isinstance(nxt, dict) else 'value'})"))
    return problems
