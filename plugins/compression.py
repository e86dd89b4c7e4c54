"""Built-in stage ``compression`` (after clearing): a large tool result shrinks the first time it is seen,
as a clearing record (``kind: "compressed"``) that clearing re-applies byte for byte from the next request
on. What it keeps, when, and why: docs/compression.md."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from contextwarden import hookimpl
from contextwarden.compress import Limits, compress, offload
from contextwarden.memory import service as memory_service
from contextwarden.memory.ids import memory_id
from contextwarden.memory.retrieve import history_items, human_text, role_of
from contextwarden.memory.wayback import peek_wording, recall_wording
from contextwarden.models.base import ApiKind
from contextwarden.plugins import clearing
from contextwarden.plugins.clearing import COMPRESSED, Slot, _last_assistant, _path_of, find_slots, session_key
from contextwarden.plugins.recall import _item
from contextwarden.sessionctl import ledger as session_ledger
from contextwarden.sessionctl.pins import pinned_tool_ids
from contextwarden.store.statecache import state_cache
from contextwarden.wire.conversation import image_count, result_text
from contextwarden.wire.dialects import dialect


@hookimpl
def cw_request(ctx) -> None:
    _compress(ctx, decide=True)


@hookimpl
def cw_configure(runtime) -> None:
    """In the proxy, the compression workers start with it (the first large result does not wait for one)."""
    cfg = runtime.settings.compression
    if cfg.enabled and offload.mode(cfg.process, runtime.settings) == "separate":
        _workers(runtime, cfg).start()


def _workers(runtime, cfg) -> offload.Offload:
    """The runtime's compression workers."""
    return runtime.memo(offload.NAME, lambda: offload.Offload(cfg.workers, preload=(offload.__name__,)))


@hookimpl
def cw_shutdown(runtime) -> None:
    pool = runtime.memo(offload.NAME, lambda: None)  # (None: never started)
    if pool is not None:
        pool.close()


@hookimpl
def cw_reapply(ctx) -> None:
    """The records of the newest results put in again, exactly as :func:`cw_request` does; nothing new."""
    _compress(ctx, decide=False)


def _tail_blocks(req, last: int) -> tuple[list[Slot], dict[str, bool]]:
    """The tool results after message ``last`` (the model's last), with their calls from that message."""
    msgs = req.messages
    calls: dict[str, tuple[str, Any, int]] = {}
    if last >= 0 and not isinstance(msgs[last].content, str):
        for ui, b in enumerate(msgs[last].content):
            if getattr(b, "type", None) == "tool_use":
                calls[b.id] = (b.name, b.input, ui)
    slots: list[Slot] = []
    errors: dict[str, bool] = {}
    for i in range(last + 1, len(msgs)):
        m = msgs[i]
        if m.role != "user" or isinstance(m.content, str):
            continue
        for bi, b in enumerate(m.content):
            if getattr(b, "type", None) != "tool_result":
                continue
            name, inp, ui = calls.get(b.tool_use_id, ("", None, -1))
            slots.append(Slot(i, b.tool_use_id, name, inp, b.content, None, -1, last if ui >= 0 else -1,
                              _pos=(i, bi, last if ui >= 0 else -1, ui)))
            errors[b.tool_use_id] = bool(b.is_error)
    return slots, errors


def _tail(ctx, edits: dict) -> tuple[list[Slot], dict[str, bool]]:
    last = _last_assistant(ctx)
    if dialect(ctx.api).tool_results == "blocks":  # (only the tail is walked)
        return _tail_blocks(ctx.request, last)
    items = dialect(ctx.api).messages_of(ctx.request)
    if not isinstance(items, list) or not any(role_of(it) == "tool" for it in items[last + 1:]):
        return [], {}  # no new tool result: the history is not walked
    slots, _ = find_slots(ctx.api, ctx.request, edits)
    return [s for s in slots if s.index > last], {}


def _last_human(ctx) -> str:
    """What the person last wrote (the task the relevant-chunks compressor scores against)."""
    return read_carried(ctx, _HUMAN, _human_in, "")[-2000:]


def _human_in(api: ApiKind, msgs: list[Any], known: str) -> str:
    for m in reversed(msgs):
        if role_of(m) == "user":
            t = human_text(api, m)
            if t.strip():
                return t
    return known


def _edited_paths(ctx) -> frozenset[str]:
    """Paths an Edit, MultiEdit, Write or NotebookEdit call of this request changed."""
    return read_carried(ctx, _EDITED, _edited_in, frozenset())


def _edited_in(api: ApiKind, msgs: list[Any], known: frozenset[str]) -> frozenset[str]:
    calls = dialect(api).tool_calls(msgs).values()
    return known | {p for c in calls if c.name in clearing.EDIT_TOOLS and (p := _path_of(c.input))}


_HUMAN = "compression.human"  # the conversation's slot: what the person last wrote in all its messages but the last
_EDITED = "compression.edited"  # the conversation's slot: the paths edit calls changed in all its messages but the last


def read_carried(ctx, key: str, read: Callable[[ApiKind, list[Any], Any], Any], empty: Any) -> Any:
    """``read(api, messages, known)`` of the request's history, reading only the messages the previous
    request of the conversation did not have: ``known`` is what that one left about its first messages
    (``History.carried``). It leaves what it read about all the messages but the last: a client that moves
    its cache breakpoint rewrites the last one every turn."""
    msgs, h = history_items(ctx.api, ctx.original), ctx.history
    if h is None or len(h.entries) != len(msgs):
        return read(ctx.api, msgs, empty)
    got = h.carried(key)
    n, known = got if got is not None else (0, empty)
    cut = max(n, len(msgs) - 1)
    upto = read(ctx.api, msgs[n:cut], known)
    h.carry_on(key, cut, upto)
    return read(ctx.api, msgs[cut:], upto)


def allowed(cfg, tool: str, tool_input: Any, is_error: bool, edited: Any = ()) -> bool:
    """The profile's per-tool policy: may this result be compressed?"""
    if tool in cfg.never_tools or ("*" not in cfg.tools and tool not in cfg.tools):
        return False
    if cfg.keep_errors and is_error:
        return False
    if cfg.keep_edited_reads and tool in clearing.READ_TOOLS and _path_of(tool_input) in edited:
        return False
    return True


def _result_tokens(ctx, slot: Slot, lazy: dict) -> int:
    """Tokens of a result, from its message's count the pipeline already made for the request (a share
    by characters when the message holds other parts): a 100 KB output is not tokenised a second time."""
    per = lazy.setdefault("msg_tokens", {})
    i = slot.index
    if i not in per:
        memo = ctx.history.tokens_kept  # per-message counts of the original
        msgs = history_items(ctx.api, ctx.original)
        if memo is not None and memo[0] is not None and len(memo[1]) == len(msgs):
            n = memo[1][i][0]
        else:
            n = ctx.runtime.tokens.count_message(ctx.api, msgs[i], ctx.model)
        per[i] = (n, _text_chars(msgs[i]))
    n, chars = per[i]
    return max(1, round(n * len(slot.text) / max(chars, len(slot.text), 1)))


def _text_chars(m: Any) -> int:
    """Characters of a message's texts and tool results (what its tokens are mostly made of)."""
    if not isinstance(m, dict):
        return 0
    c = m.get("content") if "content" in m else m.get("output")
    if isinstance(c, str):
        return len(c)
    return sum(len(result_text(b.get("content"))) if b.get("type") == "tool_result" else len(b.get("text") or "")
               for b in (c if isinstance(c, list) else ()) if isinstance(b, dict))


def _keep(ctx, chosen: list[tuple[Slot, dict]]) -> list[str]:
    """Hand the whole outputs to memory's originals under the ids their first lines name, before the
    request is sent (a queue append: memory's keeper thread redacts and writes, and a recall waits for
    what is pending), whatever place the stage has in the pipeline. [] when memory cannot take them."""
    svc = memory_service.get_service(ctx.runtime)
    if svc is None:
        return []
    try:
        return svc.keep([_item(ctx, rec["mid"], s.text, s.index, s.tool, "tool_result") for s, rec in chosen], searchable=False)
    except Exception as e:  # fail open: the results go whole
        ctx.emit("error", where="compression", message=f"keeping originals: {type(e).__name__}: {e}", action="not compressed")
        return []


def _plain_text(content: Any) -> bool:
    """A result that is only text (a string, or text parts without a breakpoint of their own): one string
    can take its place without losing an image or a ``cache_control``."""
    if isinstance(content, str):
        return True
    return isinstance(content, list) and not image_count(content) and all(
        isinstance(p, dict) and p.get("type") in ("text", "input_text", "output_text") and "cache_control" not in p
        for p in content)


def limits_of(cfg) -> Limits:
    return Limits(medium_chars=cfg.medium_chars if cfg.medium else cfg.large_chars, large_chars=cfg.large_chars,
                  keep_ratio=cfg.keep_ratio, min_keep_chars=cfg.min_keep_chars, max_keep_chars=cfg.max_keep_chars,
                  min_gain=cfg.min_gain)


WORKER_SHARE = 0.8  # of the stage's budget, for everything up to a worker's answer; the rest keeps and commits


def _first_sight(ctx, s: Slot, text: str, mid: str, limits: Limits, lazy: dict, state, key: str):
    """``(new text, compressor)`` of a result seen for the first time, or None: it stays.

    In the stage's thread (``compression.process`` inline), or in a worker process (separate: the proxy's
    interpreter lock is not held by it) until ``WORKER_SHARE`` of the stage's budget; a worker with no
    answer by then, dead, or not startable leaves the result uncompressed, as the stage running past its
    budget does (compress/offload.py). The same text either way."""
    cfg = ctx.settings.compression
    if offload.mode(cfg.process, ctx.settings) != "separate":
        got = compress(text, tool=s.tool, tool_input=s.tool_input, query=lazy["query"], limits=limits)
        if got is None:
            return None
        if "how" not in lazy:
            lazy["how"] = recall_wording(ctx, state, key)
        return offload.dress(got, s.tool, s.tool_input, len(text), mid, lazy["how"]), got.kind
    # the way back the first line names, as recall_wording will decide it if this result is compressed
    how = lazy["how"] if "how" in lazy else peek_wording(ctx, state, key)
    pool = _workers(ctx.runtime, cfg)
    end = ctx.deadline - (1 - WORKER_SHARE) * ctx.budget_ms / 1000 if ctx.deadline is not None and ctx.budget_ms \
        else time.perf_counter() + ctx.settings.pipeline.stage_budget_ms * WORKER_SHARE / 1000
    try:
        made = pool.call(offload.first_sight, text, s.tool, s.tool_input, lazy["query"], limits, mid, how,
                         timeout=end - time.perf_counter(), timings=ctx.timings)
    except offload.Unavailable as e:
        ctx.emit("error", where="compression", message=f"compression worker: {e}", action="not compressed")
        return None
    if made is None:
        return None
    if "how" not in lazy:
        lazy["how"] = recall_wording(ctx, state, key)
    if lazy["how"] != how:  # decided meanwhile by another request of the session: its first line here
        return offload.first_sight(text, s.tool, s.tool_input, lazy["query"], limits, mid, lazy["how"])
    return made


def _decide(ctx, s: Slot, errors: dict[str, bool], limits: Limits, lazy: dict[str, Any], state,
            key: str) -> dict[str, Any] | None:
    """The record of a result compressed for the first time, or None: it stays as it is."""
    cfg = ctx.settings.compression
    if len(s.text) < limits.medium_chars or not _plain_text(s.content):
        return None
    if cfg.keep_edited_reads and s.tool in clearing.READ_TOOLS and "edited" not in lazy:
        lazy["edited"] = _edited_paths(ctx)
    if not allowed(cfg, s.tool, s.tool_input, errors.get(s.id, False), lazy.get("edited", ())):
        return None
    if "query" not in lazy:
        lazy["query"] = _last_human(ctx)
    text = s.text
    if text.startswith((clearing.STUB_PREFIX, "[contextwarden compressed this ")):
        return None
    mid = memory_id(text)
    made = _first_sight(ctx, s, text, mid, limits, lazy, state, key)
    if made is None:
        return None
    new, kind = made
    toks = _result_tokens(ctx, s, lazy)
    new_toks = ctx.runtime.tokens.count_text(new, ctx.model)
    if new_toks >= toks:
        return None
    return {"h": s.digest, "stub": new, "tokens": toks, "stub_tokens": new_toks, "tool": s.tool, "mid": mid,
            "kind": COMPRESSED, "compressor": kind}


def _compress(ctx, decide: bool) -> None:
    cfg = ctx.settings.compression
    if not cfg.enabled or not ctx.settings.clearing.enabled or not ctx.settings.memory.enabled:
        # clearing's records re-apply the decisions on later requests, and memory keeps the whole output
        # the first line names: without either, nothing is compressed
        return
    edits: dict[int, dict[tuple, Any]] = {}
    slots, errors = _tail(ctx, edits)
    if not slots:
        return
    state = state_cache(ctx.runtime)
    key = session_key(ctx)
    remembered: dict[str, dict[str, Any]] = state.get(clearing.NS, key, None) or {}
    # the user's controls (sessionctl), as clearing reads them: a rolled-back compression is not
    # re-applied, and a pinned result is neither re-applied nor compressed
    ctl = session_ledger.control(ctx, live=decide)
    pinned = pinned_tool_ids(ctx, ((s.id, s.index, s.text) for s in slots)) if ctl.pins else frozenset()
    remembered = ctl.applied(clearing.NS, remembered, pinned)
    limits = limits_of(cfg)
    lazy: dict[str, Any] = {}
    applied: list[tuple[Slot, dict, bool]] = []
    new_recs: dict[str, dict[str, Any]] = {}
    for s in slots:
        rec = remembered.get(s.id)
        if rec is not None:
            if rec.get("kind") == COMPRESSED and rec["h"] == s.digest and rec.get("stub") is not None:
                applied.append((s, rec, False))
            continue  # (a clearing record on an unseen result: clearing leaves it, and so does this)
        if decide and s.id not in pinned and (rec := _decide(ctx, s, errors, limits, lazy, state, key)) is not None:
            new_recs[s.id] = rec
            applied.append((s, rec, True))
    if not applied:
        return
    kept = _keep(ctx, [(s, rec) for s, rec, new in applied if new]) if new_recs else []
    if new_recs and len(kept) < len(new_recs):
        # memory could not take the whole outputs: none of this request's new decisions is made
        applied = [(s, rec, new) for s, rec, new in applied if not new]
        new_recs = {}
        if not applied:
            return
    for s, rec, _ in applied:
        s.set(rec["stub"], edits)
    ctx.history.edit(ctx.request, edits, dialect(ctx.api).edited)
    if new_recs:
        # the records and a version of the session, in one transaction (rollback turns it off: the
        # records live in clearing's namespace)
        session_ledger.record_decision(
            ctx, clearing.NS, trigger="compression", tokens_before=sum(r["tokens"] for r in new_recs.values()),
            tokens_after=sum(r["stub_tokens"] for r in new_recs.values()),
            messages=[s.index for s, _, new in applied if new], tool_ids=list(new_recs), refs=list(new_recs),
            also=[clearing.remembering(key, new_recs)])
    _report(ctx, applied, new_recs, kept)


def _report(ctx, applied: list[tuple[Slot, dict, bool]], new_recs: dict[str, dict[str, Any]], kept: list[str]) -> None:
    """What other stages read (clearing's freed tokens, the results for automatic recall) and the event."""
    freed = sum(rec["tokens"] - rec["stub_tokens"] for _, rec, _ in applied)
    prev = ctx.notes.get("clearing") or {}
    by_index = dict(prev.get("by_index") or {})
    for s, rec, _ in applied:
        by_index[s.index] = by_index.get(s.index, 0) + rec["tokens"] - rec["stub_tokens"]
    ctx.notes["clearing"] = {**prev, "freed": int(prev.get("freed", 0)) + freed, "by_index": by_index}
    ctx.notes["cleared"] = list(ctx.notes.get("cleared") or []) + [
        # ("new": False: kept here already, the recall stage does not keep it again)
        {"tool_use_id": s.id, "memory_id": rec["mid"], "tool": s.tool, "input": s.tool_input, "text": s.text,
         "tokens": rec["tokens"], "message_index": s.index, "new": False, "compressed": True} for s, rec, new in applied]
    ctx.emit("compression", compressed=len(new_recs), reapplied=len(applied) - len(new_recs),
             tokens_before=sum(rec["tokens"] for _, rec, _ in applied), tokens_after=sum(rec["stub_tokens"] for _, rec, _ in applied),
             tools=sorted({s.tool for s, _, _ in applied}), kinds=sorted({rec.get("compressor", "") for _, rec, _ in applied}),
             ids=[rec["mid"] for _, rec, new in applied if new], kept=len(kept),
             tokens_saved=sum(rec["tokens"] - rec["stub_tokens"] for rec in new_recs.values()))
