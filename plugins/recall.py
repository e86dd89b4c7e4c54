"""Built-in stage ``recall`` (after clearing and compaction, before memory): nothing is lost.

1. **Kept before sent.** Every tool result (or input value) clearing takes out for the first time, every
   tool result compaction folds and every span of messages a compaction summary names
   (``ctx.notes["cleared"]``, ``["compacted"]``, ``["folded"]``) is handed to memory's originals
   (:meth:`MemoryService.keep`) before this request goes upstream. Handing over costs the request a
   queue append; memory's keeper thread redacts and writes, and ``recall`` waits for whatever is still
   pending, so the id its stub or summary names is found as soon as the model can read that id.
2. **Automatic recall.** When the model's latest answer refers to something only cleared or compacted
   content holds (:mod:`contextwarden.memory.autorecall`), that content is injected into this request
   where memory goes (after the last cache breakpoint, framed as memory is), once per session: the
   ids recalled are kept per session (state namespace ``recall.auto``) and not injected again for a
   path or a term, only when an Edit quotes text that only the lost content holds (what recall
   injects goes into one request; the model edits the same file again and again).

A ``recall`` event says what was kept (``kept``) and recalled (``ids``, ``why``, ``tokens``), or why
nothing was (``skipped``). Everything here fails open: the request goes on with the other stages' work.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from contextwarden import hookimpl
from contextwarden.memory import service as memory_service
from contextwarden.memory.autorecall import Found, Kept, Lost, Memos, TermIndex, excerpt, find, read_answer
from contextwarden.memory.ids import memory_id
from contextwarden.memory.inject import block_room, fit_block
from contextwarden.memory.items import MemoryItem
from contextwarden.memory.retrieve import history_items, role_of
from contextwarden.store.statecache import state_cache
from contextwarden.util.lru import LRU
from contextwarden.wire.dialects import NotInjectable, dialect
from contextwarden.wire.history import session_key as _session_key

NS = "recall.auto"
TERMS_SLOT = "recall.terms"  # the conversation slot of its lost texts' TermIndex
BUDGET_FRACTION = 0.08  # of the context window, at most, for what one request gets back
MAX_REMEMBERED = 2_000  # recalled ids remembered per session
# a term the answer names brings back a longer text as an excerpt (the lines around it): a name is not
# a reason to re-send a whole file (its id, in the excerpt's header, recalls the rest)
TERM_WHOLE_TOKENS = 2_000


def _item(ctx, mid: str, text: str, turn: int, tool: str | None, kind: str) -> MemoryItem:
    return MemoryItem(text=text, session=ctx.session, tenant=ctx.tenant, turn=int(turn), role="tool" if tool else "context",
                      kind=kind, tool=tool, workspace=ctx.settings.memory.shared_workspace, source_id=mid)


def keep_lost(ctx, svc) -> list[str]:
    """Keep what this request takes out for the first time, whole, before it is sent."""
    items = []
    for e in (ctx.notes.get("cleared") or []) + (ctx.notes.get("compacted") or []):
        if e.get("new") is not False and e.get("text") and e.get("memory_id"):
            turn = e.get("message_index")
            items.append(_item(ctx, e["memory_id"], e["text"], turn if isinstance(turn, int) else 0, e.get("tool"),
                               "tool_input" if e.get("kind") == "tool_input" else "tool_result"))
    for f in ctx.notes.get("folded") or []:
        items.append(_item(ctx, f["memory_id"], f["text"], f.get("first", 0), None, "compacted"))
    if not items:
        return []
    # only for recall by id: the memory stage stores the tool results for search itself, and a folded
    # span's messages are searchable one by one already
    return svc.keep(items, searchable=False)


def _lost_entry(e: dict) -> Lost | None:
    if not (e.get("memory_id") and e.get("text")):
        return None
    return Lost(e["memory_id"], e["text"], int(e.get("message_index") or 0), e.get("tool"), e.get("input"),
                "tool_input" if e.get("kind") == "tool_input" else "tool_result")


def _lost(ctx, index: TermIndex) -> list[Lost]:
    """What clearing and compaction took out of this request (the client still sends it whole)."""
    out = index.entries(ctx.notes.get("cleared") or [], _lost_entry)
    comp = ctx.notes.get("compaction")
    if comp:
        out += _folded(ctx, int(comp["lead"]), int(comp["end"]))
    return out


def _folded(ctx, lead: int, end: int) -> list[Lost]:
    """The tool results and longer texts of the compacted messages ``lead..end``: worked out once per
    session and span (every later request re-sends the same span while the summary is re-applied)."""
    return ctx.runtime.memo("recall.folded", lambda: LRU(64)).get(
        (_session_key(ctx), lead, end), lambda: _folded_of(ctx, lead, end))


def _folded_of(ctx, lead: int, end: int) -> list[Lost]:
    orig = history_items(ctx.api, ctx.original)
    d = dialect(ctx.api)
    got = []
    for k, t in enumerate(d.transcript(orig[lead:end], d.tool_calls(orig[:end]))):
        for p in t.parts:
            if p.kind == "tool_result" and p.text.strip():
                got.append(Lost(memory_id(p.text), p.text, lead + k, p.tool, p.tool_input))
            elif p.kind == "text" and len(p.text) >= 200:
                got.append(Lost(memory_id(p.text), p.text, lead + k, None, None, "message"))
            elif p.kind == "tool_use" and isinstance(p.tool_input, dict):
                # what a call wrote (a Write's content, an Edit's new_string) is the file as the model
                # last saw it: a later Edit quotes it
                for v in p.tool_input.values():
                    if isinstance(v, str) and len(v) >= 200:
                        got.append(Lost(memory_id(v), v, lead + k, p.tool, p.tool_input, "tool_input"))
    return got


def _term_index(ctx) -> TermIndex:
    """The conversation's index of its lost texts (its ``recall`` slot): each lost text's runs are read
    once, when it is first lost, and its terms once, when an answer's term is first in it; not again on
    every request. Carried about no message (n = 0): what it holds depends on the texts alone."""
    got = ctx.history.carried(TERMS_SLOT)
    index = got[1] if got is not None else TermIndex()
    if got is None:
        ctx.history.carry_on(TERMS_SLOT, 0, index)
    return index


def auto_recall(ctx, svc) -> dict[str, Any]:
    if not ctx.notes.get("cleared") and not ctx.notes.get("compaction"):
        return {"skipped": "nothing cleared or compacted"}
    orig = history_items(ctx.api, ctx.original)
    last = next((i for i in range(len(orig) - 1, -1, -1) if role_of(orig[i]) == "assistant"), None)
    if last is None:
        return {"skipped": "no answer yet"}
    answer = read_answer(orig[last] if isinstance(orig[last], dict) else orig[last].wire())
    if not (answer.ids or answer.quotes or answer.terms or answer.paths):
        return {"skipped": "no references"}
    index = _term_index(ctx)
    lost = _lost(ctx, index)
    if not lost:
        return {"skipped": "nothing lost"}
    state = state_cache(ctx.runtime)
    key = _session_key(ctx)
    done = set(state.get(NS, key, None) or [])
    cur = history_items(ctx.api, ctx.request)
    # what the answer refers to is held or not when the model wrote it: in the messages before it (the
    # stages before this one rewrite old turns only, so the answer and what followed it, the results of
    # its own calls, are this request's last ``len(orig) - last`` messages). A reference its own call
    # fetches again was lost all the same (as the fidelity measure counts it). Each message's wire form
    # is made only if Kept is asked (most requests never ask: a full walk of a long history otherwise).
    plain = (m.wire() if hasattr(m, "wire") else m for m in cur[: max(0, len(cur) - (len(orig) - last))])
    memo = ctx.runtime.memo("autorecall", Memos.new)
    kept = Kept(plain, memo.tokens)
    found = find(answer, lost, kept, done, memo=memo, index=index)
    # an id the model read in a stub of an earlier request (or another session of the tenant)
    for mid in sorted(answer.ids - {f.lost.memory_id for f in found} - done - answer.recalling - {x.memory_id for x in lost}):
        if svc is None or len(found) >= 3:
            break
        for it in svc.recall([mid], [ctx.tenant], ctx.settings.memory.shared_workspace, wait_s=0, chunks=False):
            found.append(Found(Lost(mid, it.text, it.turn, it.tool, None, it.kind), "id", mid))
    if not found:
        return {"skipped": "no reference to lost content"}
    # what is left of the window, as memory's block counts it: a block the request has no room for would
    # send it above the window, and the pipeline would then send the session's decided state instead
    budget, overhead = block_room(ctx, int(BUDGET_FRACTION * ctx.settings.tokens.context_window))
    if budget <= 0:
        return {"skipped": "no room", "budget": max(0, budget)}
    chosen, texts, sizes, tokens, over = [], [], [], 0, []
    for f in found:
        text = f.lost.text
        n = ctx.runtime.tokens.count_text(text, ctx.model)
        if not f.whole or (f.why == "term" and n > TERM_WHOLE_TOKENS) or (f.why in ("quote", "term") and tokens + n > budget):
            # only a part, or too big to come back whole: the lines the reference is on, and some around them
            text = excerpt(text, [f.ref]) or ("" if not f.whole else text)
            n = ctx.runtime.tokens.count_text(text, ctx.model) if text else budget + 1
        if tokens + n > budget:
            over.append(f.lost.memory_id)
            continue
        chosen.append(f)
        texts.append(text)
        sizes.append(n)
        tokens += n
    if not chosen:
        return {"skipped": "over budget", "over_budget": over, "budget": budget}
    items = [_item(ctx, f.lost.memory_id, t, f.lost.turn, f.lost.tool, f.lost.kind) for f, t in zip(chosen, texts)]
    count = partial(ctx.runtime.tokens.count_text, model=ctx.model)
    block, k, n = fit_block(items, budget + overhead, count)  # (the labels and headings too)
    if n > budget + overhead:
        return {"skipped": "no room", "budget": budget}
    over += [f.lost.memory_id for f in reversed(chosen[k:])]
    tokens = sum(sizes[:k])  # (the texts' own counts, as above: fit_block's count is the block's)
    del chosen[k:], texts[k:]
    try:
        where = dialect(ctx.api).inject(ctx.request, block)
    except NotInjectable as e:
        return {"skipped": str(e)}
    state.put(NS, key, (list(done) + [f.lost.memory_id for f in chosen])[-MAX_REMEMBERED:])
    ctx.notes["recalled"] = texts  # (the replay's fidelity counts what came back)
    return {"injected": len(chosen), "ids": [f.lost.memory_id for f in chosen], "why": [f.why for f in chosen],
            "refs": [f.ref[:80] for f in chosen], "tokens": tokens, "where": where, "over_budget": over,
            "excerpts": sum(t is not f.lost.text for f, t in zip(chosen, texts))}


@hookimpl
def cw_request(ctx) -> None:
    if not ctx.settings.memory.enabled:
        return
    t0 = time.perf_counter()
    svc = memory_service.get_service(ctx.runtime)
    data: dict[str, Any] = {}
    try:
        if svc is not None:
            kept = keep_lost(ctx, svc)
            if kept:
                data.update(kept=len(kept), kept_ids=kept)
    except Exception as e:  # recall is an extra: the request goes on
        ctx.emit("error", where="recall", message=f"keeping originals: {type(e).__name__}: {e}", action="not kept")
    try:
        if dialect(ctx.api).messages_of(ctx.request) is not None:  # (a Responses ``input`` may be a string)
            data.update(auto_recall(ctx, svc))
    except Exception as e:
        ctx.emit("error", where="recall", message=f"{type(e).__name__}: {e}", action="forwarded without recall")
        data["skipped"] = "error"
    # (the answer referred to lost content that did not fit: said, as what was kept and brought back is)
    if data.get("kept") or data.get("injected") or data.get("skipped") in ("no room", "over budget"):
        data["ms"] = round((time.perf_counter() - t0) * 1000, 3)
        ctx.emit("recall", **data)
