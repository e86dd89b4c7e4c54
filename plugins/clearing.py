"""Built-in stage ``clearing``: old tool results become short stubs (client-side ``clear_tool_uses``).

When a request's input is above ``clearing.trigger_tokens``, the content of old tool results
(Anthropic ``tool_result`` blocks, OpenAI chat ``role: tool`` messages, Responses
``function_call_output`` items) is replaced by a stub that says what was there and how to get it back::

    [contextwarden cleared this Read result for src/app.py (3,120 tokens): "def main():…". Memory id
    m-0123456789abcdef: it is stored in long-term memory; re-run the tool if you need it verbatim.]

Only the content is replaced: the call, its id and the result's id stay, so every pair stays whole.
The ``keep_recent`` most recent tool calls keep their results, results the model has not read yet
(after its last message) and ``exclude_tools`` are never cleared,
and a step clears at least ``clear_at_least`` tokens or nothing (big, rare steps: each one re-writes
the provider's prompt cache from the first newly cleared result on).

Cache stability: the set of cleared results and their stub texts are persisted per session (state
namespace ``clearing``), and re-applied byte for byte on every later request while the client keeps
sending the same result, whatever the trigger says then. A stub's text is computed once, so a token
counter whose calibration drifts never changes it.

For later stages: ``ctx.notes["cleared"]`` lists every result cleared in this request (``new`` marks
the ones cleared for the first time) with its ``memory_id`` and original ``text``, so the memory stage
can store it under the id the stub names; ``ctx.notes["clearing"]`` holds ``freed`` (tokens) and
``by_index`` (tokens freed per message index) for the compaction stage's arithmetic.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Callable

from contextwarden import hookimpl
from contextwarden.conversation import image_count, input_hint, result_text, shorten
from contextwarden.memory.ids import memory_id
from contextwarden.models.base import ApiKind
from contextwarden.statecache import state_cache

NS = "clearing"
STUB_PREFIX = "[contextwarden cleared this "
IMAGE_TOKENS = 1_600  # an image's input tokens when its size is unknown (Anthropic: ~1.15 MP max)
MAX_REMEMBERED = 5_000  # cleared results remembered per session


@dataclass
class Slot:
    """One tool result in the request, and how to replace its content."""

    index: int  # message / input item index
    id: str  # tool call id
    tool: str
    tool_input: Any
    content: Any
    set: Callable[[str], None]
    order: int  # position of its call among all calls (for keep_recent)

    _text: str | None = None

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = result_text(self.content)
        return self._text


def session_key(ctx) -> str:
    """One conversation: a tenant's session and agent (subagents share a session id)."""
    return f"{ctx.tenant}|{ctx.session}|{ctx.agent}"


def _digest(text: str) -> str:
    """A cheap fingerprint of a result (its length and both ends): telling whether the client still
    sends the same result must not cost a hash of every old result on every request."""
    ends = (text[:512] + "\0" + text[-512:]) if len(text) > 1024 else text
    return f"{len(text)}:" + hashlib.blake2b(ends.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def stub_text(tool: str, tool_input: Any, text: str, tokens: int, images: int) -> str:
    """The text that replaces a cleared result (deterministic in its arguments)."""
    hint = input_hint(tool_input, 60)
    what = f"{tool or 'tool'} result" + (f" for {hint}" if hint else "")
    size = f"{tokens:,} tokens" + (f", {images} image{'s' if images != 1 else ''}" if images else "")
    if text.strip():
        preview = shorten(text, 80)
        if not preview.endswith("…"):
            preview += "…" if len(text.strip()) > len(preview) else ""
        return (f'{STUB_PREFIX}{what} ({size}): "{preview}". Memory id {memory_id(text)}: it is stored in '
                f"long-term memory; re-run the tool if you need it verbatim.]")
    return f"{STUB_PREFIX}{what} ({size}). Images are not kept in memory; re-run the tool if you need it.]"


# ---------------------------------------------------------------------------------------------------
# finding the tool results of each API in the typed request


def _slots_anthropic(req) -> list[Slot]:
    calls: dict[str, tuple[str, Any, int]] = {}
    slots: list[Slot] = []
    for i, m in enumerate(req.messages):
        if isinstance(m.content, str):
            continue
        for b in m.content:
            t = getattr(b, "type", None)
            if t == "tool_use":
                calls.setdefault(b.id, (b.name, b.input, len(calls)))
            elif t == "tool_result":
                name, inp, order = calls.get(b.tool_use_id, ("", None, -1))

                def setter(stub: str, b=b) -> None:
                    b.content = stub

                slots.append(Slot(i, b.tool_use_id, name, inp, b.content, setter, order))
    return slots


def _slots_chat(req) -> list[Slot]:
    from contextwarden.conversation import _maybe_json

    calls: dict[str, tuple[str, Any, int]] = {}
    slots: list[Slot] = []
    for i, m in enumerate(req.messages):
        for tc in m.tool_calls or []:
            fn = tc.function
            calls.setdefault(tc.id, (fn.name if fn else "", _maybe_json(fn.arguments) if fn else None, len(calls)))
        if m.role == "tool" and m.tool_call_id is not None:
            name, inp, order = calls.get(m.tool_call_id, (m.name or "", None, -1))

            def setter(stub: str, m=m) -> None:
                m.content = stub

            slots.append(Slot(i, m.tool_call_id, name, inp, m.content, setter, order))
    return slots


def _slots_responses(req) -> list[Slot]:
    from contextwarden.conversation import _maybe_json

    if not isinstance(req.input, list):
        return []
    calls: dict[str, tuple[str, Any, int]] = {}
    slots: list[Slot] = []
    holder: dict[str, list] = {}

    def replace(i: int, stub: str) -> None:
        # items are the client's own dicts (shared with ctx.original): copy, never mutate
        if "list" not in holder:
            holder["list"] = list(req.input)
            req.input = holder["list"]
        holder["list"][i] = {**holder["list"][i], "output": stub}

    for i, it in enumerate(req.input):
        if not isinstance(it, dict):
            continue
        t = it.get("type")
        cid = it.get("call_id")
        if not isinstance(t, str) or not isinstance(cid, str):
            continue
        if t.endswith("_call"):
            calls.setdefault(cid, (str(it.get("name", t)), _maybe_json(it.get("arguments", it.get("input"))), len(calls)))
        elif t.endswith("_call_output"):
            name, inp, order = calls.get(cid, ("", None, -1))
            slots.append(Slot(i, cid, name, inp, it.get("output"), lambda stub, i=i: replace(i, stub), order))
    return slots


def find_slots(api: ApiKind, req) -> list[Slot]:
    """Every tool result of the request, in order."""
    if api is ApiKind.ANTHROPIC:
        return _slots_anthropic(req)
    if api is ApiKind.OPENAI_RESPONSES:
        return _slots_responses(req)
    return _slots_chat(req)


# ---------------------------------------------------------------------------------------------------


def _input_tokens(ctx) -> int:
    if ctx.tokens_in is not None:
        return ctx.tokens_in
    return ctx.runtime.tokens.count_request(ctx.api, ctx.original, ctx.model)


def _result_tokens(ctx, slot: Slot) -> int:
    return ctx.runtime.tokens.count_text(slot.text, ctx.model) + IMAGE_TOKENS * image_count(slot.content)


def effective(cfg, level: str | None) -> tuple[int, int, int]:
    """(trigger_tokens, keep_recent, clear_at_least) under a budget level."""
    f = cfg.level_factors.get(level or "NORMAL", 1.0)
    if f == 1.0:
        return cfg.trigger_tokens, cfg.keep_recent, cfg.clear_at_least
    return int(cfg.trigger_tokens * f), math.ceil(cfg.keep_recent * f), int(cfg.clear_at_least * f)


def _last_assistant(ctx) -> int:
    """Index of the last message/item the model produced; results after it are still unseen."""
    items = ctx.request.input if ctx.api is ApiKind.OPENAI_RESPONSES else ctx.request.messages
    for i in range(len(items) - 1, -1, -1):
        it = items[i]
        if isinstance(it, dict):
            t = it.get("type")
            if it.get("role") == "assistant" or t == "reasoning" or (isinstance(t, str) and t.endswith("_call")):
                return i
        elif getattr(it, "role", None) == "assistant":
            return i
    return -1


@hookimpl
def cw_request(ctx) -> None:
    cfg = ctx.settings.clearing
    if not cfg.enabled:
        return
    slots = find_slots(ctx.api, ctx.request)
    if not slots:
        return
    state = state_cache(ctx.runtime)
    key = session_key(ctx)
    remembered: dict[str, dict[str, Any]] = state.get(NS, key, None) or {}
    exclude = set(cfg.exclude_tools)
    trigger, keep_recent, clear_at_least = effective(cfg, ctx.notes.get("level"))

    cleared: list[dict[str, Any]] = []
    by_index: dict[int, int] = {}
    freed = 0
    done: set[str] = set()

    def note(slot: Slot, rec: dict[str, Any], new: bool) -> None:
        nonlocal freed
        gain = rec["tokens"] - rec["stub_tokens"]
        freed += gain
        by_index[slot.index] = by_index.get(slot.index, 0) + gain
        done.add(slot.id)
        cleared.append({"tool_use_id": slot.id, "memory_id": rec.get("mid"), "tool": slot.tool, "input": slot.tool_input,
                        "text": slot.text, "tokens": rec["tokens"], "message_index": slot.index, "new": new})

    # results after the model's last message are new to it: never cleared, even when a rewound
    # conversation brings back ids cleared before
    unseen_from = _last_assistant(ctx) + 1

    # 1. what was cleared before is cleared again, identically (the cached prefix holds the stubs)
    if remembered:
        for s in slots:
            rec = remembered.get(s.id)
            if rec is None or s.tool in exclude or s.id in done or s.index >= unseen_from:
                continue
            if rec["h"] != _digest(s.text):  # the client changed this result itself: leave it be
                continue
            s.set(rec["stub"])
            note(s, rec, False)

    # 2. above the trigger: clear more, oldest first, in one step of at least clear_at_least
    total = _input_tokens(ctx)
    new_recs: dict[str, dict[str, Any]] = {}
    if total - freed > trigger:
        orders = sorted({s.order for s in slots if s.order >= 0})
        recent = set(orders[-keep_recent:]) if keep_recent > 0 else set()
        candidates = []
        for s in slots:
            if s.id in done or s.tool in exclude or s.order in recent or s.order < 0:
                continue
            if s.index >= unseen_from:
                continue  # results the model has not read yet are never cleared (keep_recent 0 included)
            if s.text.startswith(STUB_PREFIX):
                continue
            toks = _result_tokens(ctx, s)
            if toks < cfg.min_result_tokens:
                continue
            candidates.append((s, toks))
        need = max(clear_at_least, total - freed - trigger)
        chosen, gain = [], 0
        for s, toks in candidates:
            if gain >= need:
                break
            stub = stub_text(s.tool, s.tool_input, s.text, toks, image_count(s.content))
            stub_toks = ctx.runtime.tokens.count_text(stub, ctx.model)
            if stub_toks >= toks:
                continue
            chosen.append((s, toks, stub, stub_toks))
            gain += toks - stub_toks
        if chosen and gain >= clear_at_least:
            for s, toks, stub, stub_toks in chosen:
                text = s.text
                rec = {"h": _digest(text), "stub": stub, "tokens": toks, "stub_tokens": stub_toks, "tool": s.tool,
                       "mid": memory_id(text) if text.strip() else None}
                s.set(stub)
                new_recs[s.id] = rec
                note(s, rec, True)

    if new_recs:
        merged = {**(state.get(NS, key, None) or {}), **new_recs}  # re-read: a concurrent request may have added some
        if len(merged) > MAX_REMEMBERED:
            merged = dict(list(merged.items())[-MAX_REMEMBERED:])
        state.put(NS, key, merged)

    ctx.notes["clearing"] = {"freed": freed, "by_index": by_index}
    if not cleared:
        return
    ctx.notes.setdefault("cleared", []).extend(cleared)
    ctx.emit("clearing", cleared=len(cleared), new=len(new_recs), tokens_freed=freed,
             tools=sorted({c["tool"] for c in cleared}), ids=[c["memory_id"] for c in cleared if c["new"]],
             tokens_before=total, level=str(ctx.notes.get("level") or "NORMAL"))
