"""Built-in stage ``clearing``: old tool results become short stubs (client-side ``clear_tool_uses``).

When a request's input is above ``clearing.trigger_tokens``, the content of old tool results
(Anthropic ``tool_result`` blocks, OpenAI chat ``role: tool`` messages, Responses
``function_call_output`` items) is replaced by a stub that says what was there and how to get it back::

    [contextwarden cleared this Read result for src/app.py (3,120 tokens): "def main():…". Memory id
    m-0123456789abcdef: call mcp__contextwarden__recall with this id to get it back verbatim, or re-run the tool.]

The closing sentence names the way back this session's client has (:func:`recall_wording`): the MCP
recall tool when the request's ``tools`` offer it, else ``contextwarden recall ID`` (a shell-capable
agent runs it). It is decided at the session's first clearing and kept with its clearing records
(namespace ``clearing.recall``, :mod:`contextwarden.memory.wayback`): a stub's text never changes once written.

Only the content is replaced: the call, its id and the result's id stay, so every pair stays whole.
The ``keep_recent`` most recent tool calls keep their results, results the model has not read yet
(after its last message) and ``exclude_tools`` are never cleared,
and a step clears at least ``clear_at_least`` tokens or nothing (big, rare steps: each one re-writes
the provider's prompt cache from the first newly cleared result on).

Cache stability: the set of cleared results and their stub texts are persisted per session (state
namespace ``clearing``), and re-applied byte for byte on every later request while the client keeps
sending the same result, whatever the trigger says then. A stub's text is computed once, so a token
counter whose calibration drifts never changes it.

Tool inputs (``clearing.clear_tool_inputs``, off by default as Anthropic's ``clear_tool_inputs`` is):
for a call whose result is cleared, the large values of its input (a Write's file body, an Edit's
strings) become a stub string too, in an input that stays a JSON object with its small values (the
path, the command) as they were::

    {"file_path": "src/app.py", "content": "[contextwarden cleared this input value (5,210 tokens):
    \"def main():…\". Memory id m-…: call mcp__contextwarden__recall with this id to get it back verbatim.]"}

A Write or Edit, whose result is one short line, is cleared for its input alone. The latest assistant
message, and the assistant messages of the current turn that carry thinking blocks (their signed turn
goes back to the API as it was), keep their inputs; thinking blocks are never touched. Input stubs are
persisted with the result's record and re-applied byte for byte like result stubs.

For later stages: ``ctx.notes["cleared"]`` lists every result cleared in this request (``new`` marks
the ones cleared for the first time) with its ``memory_id`` and original ``text``, so the memory stage
can store it under the id the stub names; ``ctx.notes["clearing"]`` holds ``freed`` (tokens) and
``by_index`` (tokens freed per message index) for the compaction stage's arithmetic, and ``freed_free``
(of ``freed``, what steps only a free moment allows took: compaction's free-moment threshold counts it).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import accumulate
from typing import Any, NamedTuple

import orjson

from contextwarden import hookimpl
from contextwarden.compress import policy as learned_policy
from contextwarden.compress.policy import LATE_ANSWERS, free_from, request_time, subject
from contextwarden.compress.stubmemo import result_stub
from contextwarden.memory.ids import memory_id
from contextwarden.memory.wayback import recall_wording, way_back
from contextwarden.models.anthropic import TextBlock, ToolUseBlock
from contextwarden.models.base import ApiKind
from contextwarden.sessionctl import ledger as session_ledger
from contextwarden.sessionctl.pins import pinned_tool_ids
from contextwarden.store.statecache import state_cache
from contextwarden.util.lru import memoized
from contextwarden.util.redact import redact_text
from contextwarden.wire.conversation import image_count, input_hint, maybe_json, result_text, shorten
from contextwarden.wire.cost import LOOKBACK_BLOCKS
from contextwarden.wire.dialects import NO_PROVIDER, dialect
from contextwarden.wire.history import same_prefix, session_key
from contextwarden.wire.references import answer_items, holds, strings
from contextwarden.wire.workingset import READ_TOOLS, budget_in, files, working_set
from contextwarden.wire.workingset import path_of as _path_of

NS = "clearing"
STUB_PREFIX = "[contextwarden cleared this "
INPUT_STUB_PREFIX = STUB_PREFIX + "input value"
INPUT_VALUE_CHARS = 300  # input values longer than this (serialised) are the ones replaced
IMAGE_TOKENS = 1_600  # an image's input tokens when its size is unknown (Anthropic: ~1.15 MP max)
MAX_REMEMBERED = 5_000  # cleared results remembered per session
COMPRESSED = "compressed"  # a record's kind when the compression stage made it (plugins/compression.py)
# a step pays when what it frees x the requests to come >= this x what it re-writes: (1.25 - 0.1) / 0.1,
# times 1.25 for the messages between the results (assistant texts, tool inputs) it does not count
STALE_PAYBACK = 14


@dataclass(slots=True)
class Slot:
    """One tool result in the request, and how to replace its content.

    A typed message's slot records its changes into the request's ``edits`` (see History.edit) and holds
    nothing else of the request, so the next request of the conversation reuses it (_Prefix)."""

    index: int  # message / input item index
    id: str  # tool call id
    tool: str
    tool_input: Any
    content: Any
    setter: Callable[[str], None] | None  # replaces the content (else recorded in edits)
    order: int  # position of its call among all calls (for keep_recent)
    call_index: int = -1  # message / item index of its call
    input_setter: Callable[[Any], None] | None = None  # replaces the call's input (a dict) in the request
    input_locked: bool = False  # the call is in a message whose input must not change (else see cw_request's locked)

    _text: str | None = None
    _digest: str | None = None
    _pos: tuple[int, int, int, int] | None = None  # (message, block, call message, call block)
    _tokens: dict = field(default_factory=dict, compare=False, repr=False)  # model -> tokens: counted once, the slot carried
    # (model, wording, tokens) -> (stub, its tokens, memory id): worked out once, the slot carried (the
    # runtime's bounded memo, shared by every conversation, evicts under load)
    _stubs: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = result_text(self.content)
        return self._text

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = _digest(self.text)
        return self._digest

    @property
    def can_set_input(self) -> bool:
        return self.input_setter is not None or (self._pos is not None and self._pos[3] >= 0)

    def set(self, stub: str, edits: dict[int, dict[tuple, Any]]) -> None:
        if self.setter is not None:
            self.setter(stub)
        else:
            assert self._pos is not None  # (a slot without a setter is one of blocks: placed)
            i, bi, _, _ = self._pos
            _edit(edits, i, ("r", bi), stub)

    def set_input(self, new: Any, edits: dict[int, dict[tuple, Any]]) -> None:
        if self.input_setter is not None:
            self.input_setter(new)
        else:
            assert self._pos is not None
            _, _, ci, ui = self._pos
            _edit(edits, ci, ("i", ui), new)  # a new dict: the client's is never mutated


def _edit(edits: dict[int, dict[tuple, Any]], i: int, key: tuple, value: Any) -> None:
    """Record a change of message ``i`` in ``edits`` as a new dict of its changes, never changing one in
    place: step 1's edits are then carried to the next request and copied at C speed (_reapply)."""
    edits[i] = {**edits.get(i, {}), key: value}


# Memo sizes (least recently used out). Every remembered result is fingerprinted on every request, and
# a candidate that does not make a step is stubbed again on the next one: both are pure functions of
# texts the client re-sends unchanged, so they are computed once per distinct text.
DIGEST_MEMO = 16_384  # keys of at most ~1K characters each
STUB_MEMO = 1_024
STUB_MEMO_CHARS = 16_384  # longer results are not kept in the stub memo (bounds it at ~16M characters)


@memoized(DIGEST_MEMO)
def _digest_of(n: int, ends: str) -> str:
    return f"{n}:" + hashlib.blake2b(ends.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _digest(text: str) -> str:
    """A cheap fingerprint of a result (its length and both ends): telling whether the client still
    sends the same result must not cost a hash of every old result on every request. Memoised by
    exactly what it is computed from (the text, or its length and both ends)."""
    n = len(text)
    return _digest_of(n, text[:512] + "\0" + text[-512:] if n > 1024 else text)


def stub_text(tool: str, tool_input: Any, text: str, tokens: int, images: int, how: str = "") -> str:
    """The text that replaces a cleared result (deterministic in its arguments)."""
    hint = input_hint(tool_input, 60)
    if len(text) <= STUB_MEMO_CHARS:
        return _stub_text_memo(tool, hint, text, tokens, images, how)
    return _stub_text(tool, hint, text, tokens, images, how)


def _stub_text(tool: str, hint: str, text: str, tokens: int, images: int, how: str = "") -> str:
    what = f"{tool or 'tool'} result" + (f" for {redact_text(hint)}" if hint else "")
    size = f"{tokens:,} tokens" + (f", {images} image{'s' if images != 1 else ''}" if images else "")
    if text.strip():
        mid = memory_id(text)
        return f'{STUB_PREFIX}{what} ({size}): "{_preview(text)}". Memory id {mid}: {way_back(mid, how)}.]'
    return f"{STUB_PREFIX}{what} ({size}). Images are not kept in memory; re-run the tool if you need it.]"


PREVIEW_CHARS = 80
PREVIEW_READ = 4096  # what the preview's redaction reads at most
PREVIEW_MARGIN = 1024  # characters of the redacted window past the preview's end (a secret starting in it is read whole)


def _preview(text: str) -> str:
    """A stub's quote of the start of what it replaced (the stub is stored with the session: no secret in it)."""
    preview = shorten(_redacted_start(text[:PREVIEW_READ]), PREVIEW_CHARS)
    if not preview.endswith("…") and len(text.strip()) > len(preview):
        preview += "…"
    return preview


def _redacted_start(head: str) -> str:
    """``redact_text(head)``, or the redaction of a shorter start of ``head`` (~2 KB, doubled until it
    holds) whose first PREVIEW_CHARS collapsed characters end PREVIEW_MARGIN characters before its end:
    a secret starting in the preview is read whole there unless it runs on past the window's end, and
    one that does (a value with no white space in the window's last PREVIEW_MARGIN characters: a long
    token, a quoted key) sends it to the whole 4 KB. A step stubs 20-40 results at once: redacting 4 KB
    each was most of its CPU."""
    w = PREVIEW_CHARS + 2 * PREVIEW_MARGIN
    while w < len(head):
        window = head[:w]
        if not any(c.isspace() for c in window[-PREVIEW_MARGIN:]):
            break  # something runs on past the cut: read it all
        red = redact_text(window)
        if len(" ".join(red[:len(red) - PREVIEW_MARGIN].split())) > PREVIEW_CHARS:
            return red
        w *= 2
    return redact_text(head)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def _value_text(v: Any) -> str:
    return v if isinstance(v, str) else _dumps(v)


_stub_text_memo = memoized(STUB_MEMO)(_stub_text)


def input_value_stub(text: str, tokens: int, how: str = "") -> str:
    """The text that replaces one large value of a cleared call's input (deterministic)."""
    mid = memory_id(text)
    return f'{INPUT_STUB_PREFIX} ({tokens:,} tokens): "{_preview(text)}". Memory id {mid}: {way_back(mid, how).removesuffix(", or re-run the tool")}.]'


def input_stub(tool_input: dict, count: Callable[[str], int], how: str = "") -> tuple[dict, dict[str, str]] | None:
    """A cleared call's input: the same object with each value longer than ``INPUT_VALUE_CHARS`` (as
    JSON) replaced by a stub string; and the memory id of each replaced value by key. None when no
    value is that large (or all of them are stubs already)."""
    out: dict[str, Any] = {}
    mids: dict[str, str] = {}
    for k, v in tool_input.items():
        text = _value_text(v)
        if len(text) > INPUT_VALUE_CHARS and not text.startswith(STUB_PREFIX) and text.strip():
            out[k] = input_value_stub(text, count(text), how)
            mids[k] = memory_id(text)
        else:
            out[k] = v
    return (out, mids) if mids else None


# ---------------------------------------------------------------------------------------------------
# finding the tool results of each API in the typed request


class _Use(NamedTuple):
    """A tool_use block as clearing reads it."""

    block: int  # its index in the message's content
    id: str
    name: str
    input: Any


class _Result(NamedTuple):
    """A tool_result block as clearing reads it."""

    block: int
    tool_use_id: str
    content: Any
    text: str
    digest: str


class _Call(NamedTuple):
    """A tool call seen so far: what a result's slot needs of the call it answers."""

    name: str
    input: Any
    order: int  # among the request's calls
    message: int  # the index of the message holding it
    block: int  # its index in that message's content (chat: in its tool_calls)
    function: Any = None  # (chat: the call's function object)


_NO_CALL: _Call = _Call("", None, -1, -1, -1)


def _tool_facts(m) -> tuple:
    """What clearing reads of one message: its tool calls (_Use) and tool results (_Result). A pure
    function of the message, so it is remembered with it while the message comes back unchanged
    (``History.memos``)."""
    if isinstance(m.content, str):
        return ()
    out: list[_Use | _Result] = []
    for bi, b in enumerate(m.content):
        t = getattr(b, "type", None)
        if t == "tool_use":
            out.append(_Use(bi, b.id, b.name, b.input))
        elif t == "tool_result":
            text = result_text(b.content)
            out.append(_Result(bi, b.tool_use_id, b.content, text, _digest(text)))
    return tuple(out)


_FACTS_KEY = ("clearing", "facts")


class _Prefix:
    """What clearing worked out about a request's first ``n`` messages, for the conversation's next
    request, which starts with them (``History.carried``): the tool calls seen, the slots, and what
    step 1 re-applied there under a given set of records and settings. Read-only once made."""

    __slots__ = ("n", "calls", "slots", "step1", "orders", "pending")

    def __init__(self, n: int, calls: dict, slots: list[Slot], step1: tuple | None) -> None:
        self.n, self.calls, self.slots, self.step1 = n, calls, slots, step1
        self.orders: list[int] = []  # the distinct call orders of the slots, sorted (for keep_recent)
        self.pending: list[Slot] = []  # the slots step 2 may still clear, oldest first (under step1's stamp)


_CARRY = ("clearing", "prefix")


def _slots_blocks(req, history=None, prior: _Prefix | None = None, cut: int | None = None) -> tuple[list[Slot], dict | None]:
    """The slots, resuming after ``prior``'s messages when given; and the tool calls seen before
    message ``cut`` (to carry on), when asked."""
    msgs = req.messages
    start = prior.n if prior is not None else 0
    calls: dict[str, _Call] = dict(prior.calls) if prior is not None else {}
    slots: list[Slot] = list(prior.slots) if prior is not None else []
    tail = msgs[start:] if start else msgs
    every = history.memos(tail, _FACTS_KEY, _tool_facts, start) if history is not None else list(map(_tool_facts, tail))
    calls_at_cut = dict(calls) if cut is not None and cut == start else None
    for i, facts in enumerate(every, start):
        if i == cut:
            calls_at_cut = dict(calls)
        for f in facts:
            if type(f) is _Use:
                calls.setdefault(f.id, _Call(f.name, f.input, len(calls), i, f.block))
            else:
                bi, tid, content, text, digest = f
                c = calls.get(tid, _NO_CALL)
                slots.append(Slot(i, tid, c.name, c.input, content, None, c.order, c.message, None, False,
                                  _text=text, _digest=digest, _pos=(i, bi, c.message, c.block)))
    if cut is not None and calls_at_cut is None and cut >= len(msgs):
        calls_at_cut = dict(calls)
    return slots, calls_at_cut  # (None when cut is before where this resumed: nothing to carry)


def _slots_chat(req, edits: dict[int, dict[tuple, Any]]) -> list[Slot]:
    calls: dict[str, _Call] = {}
    slots: list[Slot] = []
    last = _last_produced(req.messages)
    for i, m in enumerate(req.messages):
        for ti, tc in enumerate(m.tool_calls or []):
            fn = tc.function
            calls.setdefault(tc.id, _Call(fn.name if fn else "", maybe_json(fn.arguments) if fn else None, len(calls), i, ti, fn))
        if m.role == "tool" and m.tool_call_id is not None:
            c = calls.get(m.tool_call_id, _NO_CALL._replace(name=m.name or ""))
            ci, ti, fn = c.message, c.block, c.function

            def setter(stub: str, i=i) -> None:
                _edit(edits, i, ("r", 0), stub)

            def set_input(new: Any, ci=ci, ti=ti) -> None:
                # arguments stay a JSON string of an object
                _edit(edits, ci, ("a", ti), orjson.dumps(new).decode())

            ok = fn is not None and isinstance(fn.arguments, str)
            slots.append(Slot(i, m.tool_call_id, c.name, c.input, m.content, setter, c.order, ci,
                              set_input if ok else None, ci == last))
    return slots


def _slots_items(req) -> list[Slot]:
    if not isinstance(req.input, list):
        return []
    calls: dict[str, tuple[str, Any, int, int]] = {}
    slots: list[Slot] = []
    holder: dict[str, list] = {}

    def replace(i: int, key: str, value: Any) -> None:
        # items are the client's own dicts (shared with ctx.original): copy, never mutate
        if "list" not in holder:
            holder["list"] = list(req.input)
            req.input = holder["list"]
        holder["list"][i] = {**holder["list"][i], key: value}

    def set_arguments(ci: int, new: Any) -> None:
        replace(ci, "arguments", orjson.dumps(new).decode())

    last = _last_produced(req.input)
    for i, it in enumerate(req.input):
        if not isinstance(it, dict):
            continue
        t = it.get("type")
        cid = it.get("call_id")
        if not isinstance(t, str) or not isinstance(cid, str):
            continue
        if t.endswith("_call"):
            calls.setdefault(cid, (str(it.get("name", t)), maybe_json(it.get("arguments", it.get("input"))), len(calls), i))
        elif t.endswith("_call_output"):
            name, inp, order, ci = calls.get(cid, ("", None, -1, -1))
            ok = ci >= 0 and isinstance(req.input[ci], dict) and isinstance(req.input[ci].get("arguments"), str)
            slots.append(Slot(i, cid, name, inp, it.get("output"), partial(replace, i, "output"), order, ci,
                              partial(set_arguments, ci) if ok else None, ci == last))
    return slots


def find_slots(api: ApiKind, req, edits: dict[int, dict[tuple, Any]], history=None, prior: _Prefix | None = None,
               cut: int | None = None) -> tuple[list[Slot], dict | None]:
    """Every tool result of the request, in order, by where the dialect keeps them (``tool_results``).
    Setting a typed message's slot records into ``edits`` (message index -> changes), which ``History.edit``
    puts in. For results in blocks (Anthropic), the slots resume after ``prior``'s and the tool calls seen
    before message ``cut`` come back too (to carry on; None otherwise)."""
    shape = dialect(api).tool_results
    if shape == "blocks":
        return _slots_blocks(req, history, prior, cut)
    if shape == "items":
        return _slots_items(req), None
    return _slots_chat(req, edits), None


# ---------------------------------------------------------------------------------------------------


def _input_tokens(ctx) -> int:
    if ctx.tokens_in is not None:
        return ctx.tokens_in
    return ctx.runtime.tokens.count_request(ctx.api, ctx.original, ctx.model)


def _result_tokens(ctx, slot: Slot) -> int:
    return slot._tokens.get(ctx.model) or slot._tokens.setdefault(  # (a slot of the prefix comes back: counted once)
        ctx.model, ctx.runtime.tokens.count_text(slot.text, ctx.model) + IMAGE_TOKENS * image_count(slot.content))


def effective(cfg, level: str | None) -> tuple[int, int, int]:
    """(trigger_tokens, keep_recent, clear_at_least) under a budget level."""
    f = cfg.level_factors.get(level or "NORMAL", 1.0)
    if f == 1.0:
        return cfg.trigger_tokens, cfg.keep_recent, cfg.clear_at_least
    return int(cfg.trigger_tokens * f), math.ceil(cfg.keep_recent * f), int(cfg.clear_at_least * f)


def _last_assistant(ctx) -> int:
    """Index of the last message/item the model produced; results after it are still unseen."""
    return _last_produced(dialect(ctx.api).messages_of(ctx.request) or [])


def _last_produced(items: list) -> int:
    """Index of the last of ``items`` (typed messages, or Responses items) the model produced, or -1."""
    for i in range(len(items) - 1, -1, -1):
        it = items[i]
        if isinstance(it, dict):
            t = it.get("type")
            if it.get("role") == "assistant" or t == "reasoning" or (isinstance(t, str) and t.endswith("_call")):
                return i
        elif getattr(it, "role", None) == "assistant":
            return i
    return -1


EDIT_TOOLS = frozenset({"Edit", "MultiEdit", "Write", "NotebookEdit"})  # (a Write changes the file too)


def _files_being_edited(slots: list[Slot], last_calls: int) -> set[str]:
    """Files an edit among the last ``last_calls`` tool calls changed (slots are in call order: only
    the tail is looked at)."""
    if last_calls <= 0 or not slots:
        return set()
    top = max((s.order for s in slots[-last_calls:]), default=-1)
    out: set[str] = set()
    for s in reversed(slots):
        if s.order >= 0 and s.order <= top - last_calls:
            break
        if s.tool in EDIT_TOOLS and (p := _path_of(s.tool_input)):
            out.add(p)
    return out


def remember(state, key: str, new_recs: dict[str, dict[str, Any]]) -> None:
    """Add records to the session's (atomically: a concurrent request, another replica, may have added some)."""
    state.update(*remembering(key, new_recs))


def remembering(key: str, new_recs: dict[str, dict[str, Any]]) -> tuple[str, str, Callable[[Any], Any]]:
    """:func:`remember` as an ``(ns, key, fn)`` update, for a decision's one transaction
    (``session_ledger.record_decision(also=...)``)."""
    def merge(cur):
        merged = {**(cur or {}), **new_recs}
        return dict(list(merged.items())[-MAX_REMEMBERED:]) if len(merged) > MAX_REMEMBERED else merged

    return NS, key, merge


def _may_step(candidates: list[tuple[Slot, int]], remembered: dict[str, dict[str, Any]], clear_at_least: int,
              input_allowed: Callable[[Slot], bool]) -> bool:
    """Whether ``candidates`` could make a step of ``clear_at_least`` tokens. A step frees at most their
    tokens less what their compression freed already (a stub's own tokens come off that too), so below
    clear_at_least it would be dropped, whatever the stubs (so none is computed). An input that may be
    cleared is not counted here: it may always be worth a look."""
    if any(input_allowed(s) for s, _ in candidates):
        return True
    return sum(max(0, toks - _compressed_gain(remembered.get(s.id), s)) for s, toks in candidates) >= clear_at_least


def _compressed_gain(rec: dict[str, Any] | None, slot: Slot) -> int:
    """What a compression record re-applied on this slot by step 1 frees (a clearing step may still
    replace it with a stub, which then frees only the rest)."""
    if rec is None or rec.get("kind") != COMPRESSED or rec["h"] != slot.digest:
        return 0
    return rec["tokens"] - rec["stub_tokens"]


def _working_set(ctx, slots: list[Slot], budget: int, carry: _Prefix | None = None) -> frozenset[str]:
    """Ids of the results the working set keeps (:mod:`contextwarden.wire.workingset`): the latest Read of
    each file still current, and the Edits made to it since, within ``budget`` tokens. The files of the
    calls in ``carry``'s slots (this request's carried prefix) are left to the next request, which has
    the same slot objects and reads only the calls after them."""
    if budget <= 0:
        return frozenset()
    calls: list[Any] = [s for s in slots if s.order >= 0]  # (a slot is a call as working_set reads one)
    m = len([s for s in carry.slots if s.order >= 0]) if carry is not None and ctx.history is not None else 0
    # the conversation's slot: the files (workingset.Files) of the carried calls, and what the working set
    # kept when those were all the calls (a person's follow-ups: the same answer until the next call)
    key = ("clearing", "working set")
    got = ctx.history.carried(key) if m else None  # (carried about no message: its calls are checked here)
    known, last = got[1] if got is not None and len(got[1][0].calls) <= m else (None, None)
    if known is not None and same_prefix(known.calls, calls) < len(known.calls):
        known = None
    head = files(calls[len(known.calls) if known is not None else 0:m], known)
    whole = (budget, ctx.model) if m == len(calls) else None
    if head is known and whole is not None and last is not None and last[0] == whole:
        return last[1]
    ws: list[Any] = working_set(files(calls[m:], head), budget, partial(_result_tokens, ctx))  # (slots as calls)
    kept = frozenset(s.id for s in ws)
    if m:
        ctx.history.carry_on(key, 0, (head, (whole, kept) if whole is not None else None))
    return kept


@hookimpl
def cw_request(ctx) -> None:
    _clear(ctx, decide=True)


@hookimpl
def cw_reapply(ctx) -> None:
    """The session's stored records, put in again exactly as :func:`cw_request` does (its step 1),
    and no new clearing (step 2 does not run): the pipeline's fall-back when a stage failed."""
    _clear(ctx, decide=False)


def _clear(ctx, decide: bool) -> None:
    """re-apply (step 1: the session's records, put in again) → choose (step 2, when ``decide``: clear
    more) → commit (the stubs in, the new records stored, the notes and the event)."""
    st = _begin(ctx, decide)
    if st is None:
        return
    _reapply(st)
    if decide and not ctx.notes.get("provider", NO_PROVIDER).clearing_steps_back:  # (the provider clears)
        _choose(st)
    _commit_step(st)


@dataclass(slots=True)
class _Clearing:
    """What the steps of one request's clearing share (built by :func:`_begin`), and what they did so far."""

    ctx: Any
    cfg: Any
    decide: bool
    ctl: Any  # the user's controls: rollback, pins, compact now
    history: Any
    prior: _Prefix | None
    unseen_from: int  # results from this message on are new to the model
    cut: int | None
    slots: list[Slot]
    calls_at_cut: dict | None
    locked: set[int]
    state: Any
    key: str
    remembered: dict[str, dict[str, Any]]  # the session's records
    pinned: frozenset
    exclude: set[str]
    trigger: int
    keep_recent: int
    clear_at_least: int
    inputs_on: bool
    boundary: int
    free: int | None  # a free moment: the message from which the prompt is written again anyway (else None)
    learned: Any  # the tenant's learned policy, or None
    edits: dict[int, dict[tuple, Any]] = field(default_factory=dict)  # message index -> changes
    cleared: list[dict[str, Any]] = field(default_factory=list)
    by_index: dict[int, int] = field(default_factory=dict)
    freed: int = 0
    freed_free: int = 0  # of freed: what steps took only because the moment is free (small steps, left paths)
    done: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: {"results": 0, "inputs": 0})
    resumed: bool = False  # step 1 of the previous request's messages taken as it was
    carry: _Prefix | None = None
    total: int = 0
    freed_before: int = 0
    new_recs: dict[str, dict[str, Any]] = field(default_factory=dict)
    chosen: list[tuple[Slot, dict[str, Any]]] = field(default_factory=list)

    def free_step(self, slot: Slot) -> bool:
        """Whether a step may take ``slot`` whatever the step's size: at a free moment, a result after the
        message from which the prompt is written again anyway, of a tool whose output goes stale
        (``stale_after``; docs/REPLAY.md: other results taken there were quoted later, or moved every
        later compaction)."""
        return self.free is not None and slot.index >= self.free and slot.tool in self.cfg.stale_after

    def input_allowed(self, slot: Slot) -> bool:
        return (self.inputs_on and slot.can_set_input and not slot.input_locked and slot.call_index not in self.locked
                and slot.call_index >= self.boundary
                and isinstance(slot.tool_input, dict))

    def apply(self, slot: Slot, rec: dict[str, Any], new: bool) -> bool:
        """Put the record's stubs in place; notes what it freed. False when nothing applied."""
        edits, cleared, by_index, counts = self.edits, self.cleared, self.by_index, self.counts
        gain_r = gain_i = 0
        if rec.get("stub") is not None:
            slot.set(rec["stub"], edits)
            gain_r = rec["tokens"] - rec["stub_tokens"]
            if new and (prev := _compressed_gain(self.remembered.get(slot.id), slot)):
                gain_r -= prev  # the compressed text it replaces freed that much already
                cleared[:] = [c for c in cleared if c["tool_use_id"] != slot.id]
        if rec.get("input_stub") is not None and self.input_allowed(slot) and _digest(_dumps(slot.tool_input)) == rec.get("ih"):
            slot.set_input(rec["input_stub"], edits)
            gain_i = rec["input_tokens"] - rec["input_stub_tokens"]
        elif rec.get("stub") is None:
            return False
        self.freed += gain_r + gain_i
        if gain_r or rec.get("stub") is not None:
            by_index[slot.index] = by_index.get(slot.index, 0) + gain_r
            mine = rec.get("kind") != COMPRESSED  # (a compression record: in notes, not in clearing's event)
            counts["results"] += mine
            cleared.append({"tool_use_id": slot.id, "memory_id": rec.get("mid"), "tool": slot.tool, "input": slot.tool_input,
                            "text": slot.text, "tokens": rec["tokens"], "message_index": slot.index, "new": new,
                            **({} if mine else {"compressed": True})})
        if gain_i:
            by_index[slot.call_index] = by_index.get(slot.call_index, 0) + gain_i
            counts["inputs"] += 1
            for key, mid in (rec.get("input_mids") or {}).items():
                v = slot.tool_input.get(key)
                cleared.append({"tool_use_id": slot.id, "memory_id": mid, "tool": slot.tool, "input": slot.tool_input,
                                "text": _value_text(v), "tokens": None, "message_index": slot.call_index, "new": new,
                                "kind": "tool_input", "key": key})
        if rec.get("kind") != COMPRESSED:  # a compressed result may still be cleared by a step
            self.done.add(slot.id)
        return True


def _begin(ctx, decide: bool) -> _Clearing | None:
    """The slots of the request and what the steps read (None: nothing to clear)."""
    cfg = ctx.settings.clearing
    if not cfg.enabled:
        return None
    ctl = session_ledger.control(ctx, live=decide)  # the user's controls: rollback, pins, compact now
    edits: dict[int, dict[tuple, Any]] = {}
    d = dialect(ctx.api)
    history = ctx.history if d.tool_results == "blocks" else None  # (the slots in blocks resume: _Prefix)
    got = history.carried(_CARRY) if history is not None else None
    prior: _Prefix | None = got[1] if got is not None else None
    # results after the model's last message are new to it: never cleared, even when a rewound
    # conversation brings back ids cleared before
    unseen_from = _last_assistant(ctx) + 1
    # what is worked out about the messages up to the model's last one holds for the next request too
    # (the end of the conversation, where locks and unseen results are, is done again)
    cut = unseen_from - 1 if history is not None else None
    slots, calls_at_cut = find_slots(ctx.api, ctx.request, edits, history, prior, cut)
    locked = d.locked_inputs(ctx.request, ctx.history)
    if not slots:
        return None
    state = state_cache(ctx.runtime)
    key = session_key(ctx)
    remembered: dict[str, dict[str, Any]] = state.get(NS, key, None) or {}
    # the user's controls (sessionctl): records a rollback turned off and pinned results are not re-applied
    pinned = pinned_tool_ids(ctx, ((s.id, s.index, s.text) for s in slots)) if ctl.pins else frozenset()
    remembered = ctl.applied(NS, remembered, pinned)
    exclude = set(cfg.exclude_tools)
    trigger, keep_recent, clear_at_least = effective(cfg, ctx.notes.get("level"))
    free = None
    if ctl.compact_now:  # compact now: clear what may be cleared, whatever the trigger
        trigger, clear_at_least = 0, 0
    elif (free := free_from(ctx, state, key, ctx.settings.compaction.cache_ttl_s)) is not None:
        # a free moment: the prompt is written again from message `free` on whatever is sent
        trigger = int(trigger * cfg.cold_trigger_factor)
    inputs_on = bool(getattr(cfg, "clear_tool_inputs", False))
    return _Clearing(ctx=ctx, cfg=cfg, decide=decide, ctl=ctl, edits=edits, history=history, prior=prior,
                     unseen_from=unseen_from, cut=cut, slots=slots, calls_at_cut=calls_at_cut, locked=locked,
                     state=state, key=key, remembered=remembered, pinned=pinned, exclude=exclude, trigger=trigger,
                     keep_recent=keep_recent, clear_at_least=clear_at_least, inputs_on=inputs_on,
                     boundary=ctx.notes.get("provider", NO_PROVIDER).boundary, free=free,
                     learned=learned_policy.load(state, ctx.tenant) if cfg.policy != "off" else None)


def _reapply(st: _Clearing) -> None:
    """Step 1: what was cleared before is cleared again, identically (the cached prefix holds the
    stubs); and what it did up to the model's last message, carried on to the next request."""
    prior, cut, history, locked, slots = st.prior, st.cut, st.history, st.locked, st.slots
    remembered, exclude, inputs_on = st.remembered, st.exclude, st.inputs_on
    edits, cleared, by_index, counts, done = st.edits, st.cleared, st.by_index, st.counts, st.done
    calls_at_cut = st.calls_at_cut
    # What it did in the messages the previous request had up to the model's last message depends on
    # nothing else than these: the same records, tools excluded, input clearing and locked calls there.
    first = 0
    if prior is not None and cut is not None and prior.step1 is not None and prior.n <= cut:
        recs, excl, inp_on, lk, bnd, effects = prior.step1
        if recs is remembered and excl == exclude and inp_on == inputs_on and lk == frozenset(x for x in locked if x < prior.n) \
                and bnd == st.boundary:
            st.resumed = True
            p_edits, p_cleared, p_by_index, p_freed, p_counts, p_done, first = effects
            edits.update(p_edits)  # (a message's changes are never changed in place: _edit)
            cleared.extend(p_cleared)
            by_index.update(p_by_index)
            st.freed = p_freed
            counts.update(p_counts)
            done.update(p_done)
    step1_at_cut = None
    n_cut = len(slots)  # the slots before message cut
    if calls_at_cut is not None and cut is not None:
        n_cut = next((si for si in range(len(slots) - 1, -1, -1) if slots[si].index < cut), -1) + 1
        if first > n_cut:
            calls_at_cut = None  # (resumed past the cut: nothing to carry)

    def step1_effects(si: int) -> tuple:
        """What step 1 has done so far, up to slot ``si`` (copies: the carry is read-only)."""
        return dict(edits), list(cleared), dict(by_index), st.freed, dict(counts), set(done), si

    if remembered:
        for si in range(first, len(slots)):
            s = slots[si]
            if calls_at_cut is not None and si == n_cut:
                step1_at_cut = step1_effects(si)
            rec = remembered.get(s.id)
            if rec is None or (s.tool in exclude and rec.get("kind") != COMPRESSED) or s.id in done or s.index >= st.unseen_from \
                    or s.index < st.boundary:  # (what the provider's compaction holds or dropped: as it came)
                continue
            if rec["h"] != s.digest:  # the client changed this result itself: leave it be
                continue
            st.apply(s, rec, False)
    if calls_at_cut is not None and history is not None and cut is not None and cut > 0:
        if step1_at_cut is None:  # (no slot at or after the cut, or nothing remembered: no loop ran there)
            step1_at_cut = step1_effects(n_cut)
        carry = st.carry = _Prefix(cut, calls_at_cut, slots[:n_cut], (
            remembered, frozenset(exclude), inputs_on, frozenset(x for x in locked if x < cut), st.boundary, step1_at_cut))
        done_cut = step1_at_cut[5]
        base = len(prior.slots) if st.resumed and prior is not None and len(prior.slots) <= n_cut else 0
        new_slots = slots[base:n_cut]
        carry.orders = sorted(set(prior.orders if base and prior is not None else ()) | {s.order for s in new_slots if s.order >= 0})
        carry.pending = [s for s in (prior.pending if base and prior is not None else ()) if s.id not in done_cut] + [
            s for s in new_slots if s.order >= 0 and s.tool not in exclude and s.id not in done_cut]
        history.carry_on(_CARRY, cut, carry)
    st.total = _input_tokens(st.ctx)
    st.freed_before = st.freed


def _choose(st: _Clearing) -> None:
    """Step 2: above the trigger, clear more, oldest first, in one step of at least clear_at_least."""
    ctx, cfg, ctl, slots, prior, done = st.ctx, st.cfg, st.ctl, st.slots, st.prior, st.done
    total, trigger, keep_recent, clear_at_least = st.total, st.trigger, st.keep_recent, st.clear_at_least
    exclude, pinned, unseen_from, remembered = st.exclude, st.pinned, st.unseen_from, st.remembered
    input_allowed, new_recs, learned = st.input_allowed, st.new_recs, st.learned
    boundary = st.boundary
    if total - st.freed > trigger and not ctl.holds(total - st.freed, ctx.settings):
        if st.resumed and prior is not None:
            # the previous request's messages: their orders and the slots step 2 may clear there are
            # known; only the newer slots are looked at one by one
            tail = slots[len(prior.slots):]
            orders = sorted(set(prior.orders[-keep_recent:] if keep_recent > 0 else ()) | {s.order for s in tail if s.order >= 0})
            looked = prior.pending + tail
        else:
            orders = sorted({s.order for s in slots if s.order >= 0})
            looked = slots
        recent = set(orders[-keep_recent:]) if keep_recent > 0 else set()
        editing = _files_being_edited(slots, cfg.keep_edited_reads)
        working = _working_set(ctx, slots, budget_in(getattr(cfg, "working_set_tokens", 0), ctx.settings.tokens.context_window), st.carry)
        candidates = []
        for s in looked:
            if s.id in done or s.tool in exclude or s.order in recent or s.order < 0 or s.id in pinned or s.id in working:
                continue
            if editing and s.tool in READ_TOOLS and _path_of(s.tool_input) in editing:
                continue
            if learned is not None and (learned.keeps_tool(s.tool) or (
                    s.tool in READ_TOOLS and learned.keeps_path(_path_of(s.tool_input)))):
                continue  # what the tenant's sessions fetched again after it was cleared
            if s.index >= unseen_from or s.index < boundary:
                continue  # results the model has not read yet are never cleared (keep_recent 0 included),
                # nor those the provider's compaction holds or dropped
            toks = 0
            if not s.text.startswith(STUB_PREFIX):
                toks = _result_tokens(ctx, s)
                if toks < cfg.min_result_tokens:
                    toks = 0
            if toks or input_allowed(s):
                candidates.append((s, toks))
        need = math.inf if cfg.clear_all or ctl.compact_now else max(clear_at_least, total - st.freed - trigger)
        chosen, gain = st.chosen, 0
        if not _may_step(candidates, remembered, clear_at_least, input_allowed):
            candidates = [c for c in candidates if st.free_step(c[0])]  # (the others' stubs are not even computed)
        how = recall_wording(ctx, st.state, st.key) if candidates else ""
        for s, toks in candidates:
            if gain >= need:
                break
            rec, g = _record(st, s, toks, how)
            if g > 0:
                chosen.append((s, rec))
                gain += g
        small = gain < clear_at_least
        if small:  # too small a step, but at a free moment
            chosen[:] = [(s, rec) for s, rec in chosen if st.free_step(s)]
        _take(st, chosen, free_only=small)
    if cfg.stale_after and not new_recs and not ctl.holds(total - st.freed, ctx.settings):
        _stale_step(st)
    if st.free is not None and learned is not None and learned.reads and not ctl.holds(total - st.freed, ctx.settings):
        _left_step(st)


def _left_step(st: _Clearing) -> None:
    """At a free moment, the results of the paths and tools the tenant's other sessions left
    (``LearnedPolicy.leaves``), read LATE_ANSWERS answers ago or more, after the message from which the prompt
    is written again anyway: they go whatever the step's size, as the stale step's results do there (a path's
    own record is more than its tool's: a Read tool kept whole for the paths that came back still leaves
    these). A file being edited keeps them (its Reads and its Edits' results)."""
    ctx, cfg, learned, free = st.ctx, st.cfg, st.learned, st.free
    assert learned is not None and free is not None
    after, session = _answers_after(st), _tag(st.key)
    editing = _files_being_edited(st.slots, cfg.keep_edited_reads)
    how, chosen = "", []
    for s in st.slots:
        if not free <= s.index < st.unseen_from or s.index < st.boundary or s.id in st.done \
                or s.id in st.pinned or s.tool in st.exclude or s.text.startswith(STUB_PREFIX):
            continue
        p = _path_of(s.tool_input)
        if not learned.leaves(subject(s.tool, p), session) or p in editing or after(s.index) < LATE_ANSWERS \
                or (toks := _result_tokens(ctx, s)) < cfg.min_result_tokens:
            continue
        how = how or recall_wording(ctx, st.state, st.key)
        rec, g = _record(st, s, toks, how)
        if g > 0:
            chosen.append((s, rec))
    _take(st, chosen, free_only=True)
    st.chosen.extend(chosen)


def _take(st: _Clearing, chosen: list[tuple[Slot, dict[str, Any]]], free_only: bool = False) -> None:
    """Apply a step's records; ``free_only``: the step is one only a free moment allows (``freed_free``)."""
    before = st.freed
    for s, rec in chosen:
        if st.apply(s, rec, True):
            st.new_recs[s.id] = rec
    if free_only:
        st.freed_free += st.freed - before


def _record(st: _Clearing, s: Slot, toks: int, how: str) -> tuple[dict[str, Any], int]:
    """The record that clears slot ``s`` (its result of ``toks`` tokens, 0: not the result; its input when
    allowed), and the tokens it frees."""
    ctx = st.ctx
    rec: dict[str, Any] = {"h": s.digest, "stub": None, "tokens": 0, "stub_tokens": 0, "tool": s.tool, "mid": None}
    g = 0
    if toks:
        made = s._stubs.get((ctx.model, how, toks))
        if made is None:
            made = s._stubs[(ctx.model, how, toks)] = result_stub(
                ctx, s.tool, s.tool_input, s.text, toks, image_count(s.content), how, stub_text)
        stub, stub_toks, mid = made
        if stub_toks < toks:
            rec.update(stub=stub, tokens=toks, stub_tokens=stub_toks, mid=mid)
            g += toks - stub_toks
    if st.input_allowed(s):
        made = input_stub(s.tool_input, lambda t: ctx.runtime.tokens.count_text(t, ctx.model), how)
        if made is not None:
            stub_input, mids = made
            in_toks = ctx.runtime.tokens.count_text(_dumps(s.tool_input), ctx.model)
            stub_in_toks = ctx.runtime.tokens.count_text(_dumps(stub_input), ctx.model)
            if in_toks >= st.cfg.min_result_tokens and stub_in_toks < in_toks:
                rec.update(input_stub=stub_input, ih=_digest(_dumps(s.tool_input)), input_tokens=in_toks,
                           input_stub_tokens=stub_in_toks, input_mids=mids)
                g += in_toks - stub_in_toks
    return rec, g - _compressed_gain(st.remembered.get(s.id), s)


def _stale_step(st: _Clearing) -> None:
    """A step of stale results only, whatever the trigger: the result of a tool in ``stale_after`` once that
    many later calls of the same tool followed it (a build or server run the model has run again since:
    seldom used again, docs/REPLAY.md). A change more than ``LOOKBACK_BLOCKS`` blocks before the last
    breakpoint makes the provider write the whole conversation again, so only stale results after the
    first message within that many blocks of the end are taken (an earlier request's cached end is read,
    what follows it written again), when what the step frees x the requests to come (as many as came so
    far) >= ``STALE_PAYBACK`` x what it re-writes, and at least ``stale_at_least``. The tenant's learned
    policy keeps a tool whose cleared results come back."""
    cfg, ctx, learned = st.cfg, st.ctx, st.learned
    msgs = dialect(ctx.api).messages_of(ctx.request) or []
    blocks, reach = 0, len(msgs)  # reach: the first message within the lookback of the last block
    while reach > 0 and blocks + (n := len(c) if isinstance(c := getattr(msgs[reach - 1], "content", None), list) else 1) <= LOOKBACK_BLOCKS:
        blocks += n
        reach -= 1
    later: Counter[str] = Counter()  # per tool, the calls seen so far walking back from the newest
    candidates: list[tuple[Slot, int, int, int]] = []  # (slot, tokens, freed and re-written from it on)
    freed = rewritten = 0
    for s in reversed(st.slots):  # (in message order)
        if s.index <= reach:
            break
        toks = _result_tokens(ctx, s) if not s.text.startswith(STUB_PREFIX) else 0
        rewritten += toks
        if s.tool not in cfg.stale_after or s.order < 0:
            continue
        n = later[s.tool]
        later[s.tool] += 1
        if n < cfg.stale_after[s.tool] or toks < cfg.min_result_tokens or s.id in st.done or s.id in st.pinned \
                or s.tool in st.exclude or s.index >= st.unseen_from or s.index < st.boundary \
                or (learned is not None and learned.keeps_tool(s.tool)):
            continue
        freed += toks
        candidates.append((s, toks, freed, rewritten))
    if not candidates or freed < cfg.stale_at_least:
        return
    so_far = sum(ctx.history.memos(msgs, _ASSISTANT, _is_assistant))  # (remembered per message: a repeat reads its new ones)
    take = max((k + 1 for k, (_, _, f, r) in enumerate(candidates)
                if f >= cfg.stale_at_least and f * so_far >= STALE_PAYBACK * r), default=0)
    if not take:
        return
    how = recall_wording(ctx, st.state, st.key)
    chosen = [(s, rec) for s, toks, _, _ in candidates[:take] for rec, g in [_record(st, s, toks, how)] if g > 0]
    _take(st, chosen)
    st.chosen.extend(chosen)


_ASSISTANT = ("clearing", "assistant")


def _is_assistant(m: Any) -> bool:
    return getattr(m, "role", None) == "assistant"


def _call_key(s: Slot) -> str:
    """What makes two calls the same fetch: a read tool's path, else the whole input."""
    return (s.tool in READ_TOOLS and _path_of(s.tool_input)) or _dumps(s.tool_input)


def _learn(st: _Clearing) -> None:
    """The tenant's policy learns what this request shows: the results a new step cleared, by tool, and
    the cleared results the model fetched again (a new call of the same tool with the same input, or
    one naming the memory id a stub gave). Written only when there is something to add."""
    cleared = Counter(rec.get("tool") or "" for rec in st.new_recs.values())
    fresh = [s for s in st.slots if s.index >= st.unseen_from]
    back: list[tuple[str, str | None]] = []
    if fresh and st.remembered:
        by_call: dict[tuple[str, str], Slot] = {}
        by_mid: dict[str, Slot] = {}
        for s in st.slots:
            rec = st.remembered.get(s.id)
            if s.index < st.unseen_from and rec is not None and rec.get("stub") is not None and rec.get("kind") != COMPRESSED:
                by_call[(s.tool, _call_key(s))] = s
                if rec.get("mid"):
                    by_mid[rec["mid"]] = s
        for n in fresh:
            text = _dumps(n.tool_input)
            old = by_call.get((n.tool, _call_key(n))) or next((s for mid, s in by_mid.items() if mid in text), None)
            if old is not None:
                back.append((old.tool, _path_of(old.tool_input)))
    read, late = _results_used(st) if st.history is not None else ((), ())
    if cleared or back or read or late:
        learned_policy.learn(st.state, st.ctx.tenant, dict(cleared), back, request_time(st.ctx), read, late, _tag(st.key))


def _tag(key: str) -> str:
    """A session as the learned policy names it (short: a record holds one per path)."""
    return hashlib.blake2b(key.encode(), digest_size=6).hexdigest()


def _subject(s: Slot) -> str | None:
    """What the learned policy follows the result of ``s`` by (``policy.subject``)."""
    return subject(s.tool, _path_of(s.tool_input))


def _answers_after(st: _Clearing) -> Callable[[int], int]:
    """message index -> the model's answers after that message, up to its last one."""
    msgs = dialect(st.ctx.api).messages_of(st.ctx.request) or []
    before = [0, *accumulate(st.ctx.history.memos(msgs, _ASSISTANT, _is_assistant))]
    return lambda i: before[st.unseen_from] - before[i + 1]


def _results_used(st: _Clearing) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The subjects (``policy.subject``: a Read's path, another tool's name) of the results new to the model in
    this request; and of the results its newest answer used late (LATE_ANSWERS answers or more after reading
    them). The answer used a result when one of its items (a name in its text or its calls' inputs, a line of
    an Edit's ``old_string``) is in the result and in no text the person wrote or the model called with, nor in
    a later result or answer text (where the model would have taken it from):
    :func:`contextwarden.offline.oracle.last_uses` is the same test in hindsight."""
    learned, slots, a = st.learned, st.slots, st.unseen_from - 1
    read = tuple(p for s in slots if s.index > a and (p := _subject(s)))
    if a < 1 or learned is None:
        return read, ()
    after = _answers_after(st)
    aged = [s for s in slots if s.index < a and not s.text.startswith(STUB_PREFIX)
            and (p := _subject(s)) and not learned.reads.get(p, (0, 0))[1]
            and after(s.index) > LATE_ANSWERS]
    if not aged:
        return read, ()
    msgs = dialect(st.ctx.api).messages_of(st.ctx.request) or []
    ans = answer_items(msgs[a].wire())
    held: list[tuple[str, bool, Slot]] = []  # (the item, a name?, the latest aged Read holding it)
    for x, name in [*((r, True) for r in ans.refs), *((ln, False) for lines, _ in ans.sources for ln in lines)]:
        if (s := max((s for s in aged if holds(s.text, x, name)), key=lambda s: s.index, default=None)) is not None:
            held.append((x, name, s))
    if not held:
        return read, ()
    said = "\n".join(st.ctx.history.memos(msgs[:a], _SAID, _said))
    late = {_subject(s) for x, name, s in held if not holds(said, x, name) and not any(
        holds(t, x, name) for t in _texts_after(msgs, slots, s.index, a))}
    return read, tuple(p for p in late if p)


_SAID = ("clearing", "said")


def _said(m: Any) -> str:
    """What a message holds that the person wrote or the model called a tool with (not results, not answer texts)."""
    mine = not _is_assistant(m)
    return "\n".join(t for b in m.blocks() for t in (
        strings(b.input) if isinstance(b, ToolUseBlock) else (b.text,) if mine and isinstance(b, TextBlock) else ()))


def _texts_after(msgs: list, slots: list[Slot], i: int, a: int) -> Iterator[str]:
    """The results and answer texts after message ``i`` and before the answer ``a``."""
    yield from (s.text for s in slots if i < s.index < a)
    yield from (b.text for m in msgs[i + 1:a] if _is_assistant(m) for b in m.blocks() if isinstance(b, TextBlock))


def _commit_step(st: _Clearing) -> None:
    """Commit: the stubs into the request (``History.edit``), the new records stored, the notes for
    later stages and the ``clearing`` event."""
    ctx, ctl, key, total, new_recs, cleared = st.ctx, st.ctl, st.key, st.total, st.new_recs, st.cleared
    # the edit, completely: the stubs by block (the stub strings come from the session's records, the same
    # objects every request, so comparing them is a pointer compare)
    ctx.history.edit(ctx.request, st.edits, dialect(ctx.api).edited)
    if st.decide and st.cfg.policy == "learn":
        try:
            _learn(st)
        except Exception as e:  # learning is an extra (its state busy, say): the step is committed all the same
            ctx.emit("error", where="clearing", message=f"learning: {type(e).__name__}: {e}", action="not learned")
    if new_recs:  # the records and the session's version: one transaction
        session_ledger.record_decision(
            ctx, NS, trigger="compact-now" if ctl.compact_now else "tokens", tokens_before=total - st.freed_before,
            tokens_after=total - st.freed, messages=[s.index for s, _ in st.chosen], tool_ids=list(new_recs), refs=list(new_recs),
            also=[remembering(key, new_recs)])
    if st.decide and ctl.compact_now and not ctx.settings.compaction.enabled:
        session_ledger.consume_compact_now(ctx)

    freed = st.freed
    ctx.notes["clearing"] = {"freed": freed, "by_index": st.by_index, "freed_free": st.freed_free}
    if not cleared:
        return
    ctx.notes.setdefault("cleared", []).extend(cleared)
    own = [c for c in cleared if not c.get("compressed")]
    if not own:
        return  # only compression records put back: the compression stage reports those
    freed -= sum(c["tokens"] - st.remembered[c["tool_use_id"]]["stub_tokens"] for c in cleared
                 if c.get("compressed") and c["tool_use_id"] in st.remembered)
    data: dict[str, Any] = dict(cleared=st.counts["results"], new=len(new_recs), tokens_freed=freed,
                                tools=sorted({c["tool"] for c in own}),
                                ids=[c["memory_id"] for c in own if c["new"] and c["memory_id"]],
                                tokens_before=total, level=str(ctx.notes.get("level") or "NORMAL"))
    if st.counts["inputs"]:
        data["inputs_cleared"] = st.counts["inputs"]
    ctx.emit("clearing", **data)
