"""Built-in stage ``memory``: brings back what the history lost, and remembers every completed turn.

``cw_request`` (last in the pipeline, after clearing and compaction took their share) searches the
tenant's memory with the last user message, keeps only items the outgoing request no longer holds,
cuts them to ``memory.top_k`` and ``memory.budget_fraction`` of the context window, and appends them as
one delimited block at the end of the last user message (cache-safe: see
:mod:`contextwarden.memory.inject`). A ``memory`` event reports what was injected (ids, scores, tokens,
ms) or why nothing was (``skipped``). Whatever goes wrong here, the request goes on without memory: the
other stages' work is kept.

``cw_turn_complete`` (off the request path) hands the request's new messages and the assistant's turn to
the ingestor's bounded queue.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import orjson

from contextwarden import hookimpl
from contextwarden.memory import produced
from contextwarden.memory import service as memory_service
from contextwarden.memory.ingest import items_from_messages
from contextwarden.memory.inject import (
    block_room,
    count_tokens,
    fit_block,
    render_item,
    strip_blocks,
)
from contextwarden.memory.items import MemoryItem
from contextwarden.memory.phatic import content_words, topical
from contextwarden.memory.project import request_project
from contextwarden.memory.retrieve import (
    AGREED_DEPTH,
    HistoryIndex,
    Hit,
    Retrieval,
    agreed,
    build_query,
    history_items,
    history_texts,
    human_text,
    message_texts,
    role_of,
    select,
    text_keys_cache,
)
from contextwarden.memory.words import tokenize
from contextwarden.models.base import ApiKind
from contextwarden.plugins.compression import read_carried
from contextwarden.plugins.strip import clean_text_ahead
from contextwarden.plugins.tagging import last_spoken
from contextwarden.store.statecache import state_cache
from contextwarden.util.lru import LRU
from contextwarden.wire.conversation import strip_cache_control
from contextwarden.wire.dialects import NotInjectable, dialect, last_user_index
from contextwarden.wire.references import names

STATE_NS = "memory.ingested"
MIN_BUDGET = 48  # tokens: below this nothing useful fits


@hookimpl
def cw_configure(runtime) -> None:
    memory_service.configure(runtime)


@hookimpl
def cw_shutdown(runtime) -> None:
    memory_service.shutdown(runtime)


def _item_tokens(ctx, item) -> int:
    """Tokens an item costs in the block: its rendered excerpt, label included, and the line break before
    it (cached by item: the same candidates come back request after request)."""
    return ctx.runtime.memo("memory.item_tokens", lambda: LRU(50_000)).get(
        (ctx.model, item.id), lambda: count_tokens(ctx, render_item(item)) + 1)


@hookimpl
def cw_request(ctx) -> None:
    m = ctx.settings.memory
    if not m.enabled:
        return
    t0 = time.perf_counter()
    result = {"injected": 0, "tokens": 0, "ids": [], "scores": [], "skipped": None}

    def finish(**extra) -> None:
        result.update(extra)
        result.setdefault("why", _why(result))
        result["ms"] = round((time.perf_counter() - t0) * 1000, 3)
        ctx.notes["memory"] = result
        ctx.emit("memory", **result)

    if ctx.helper_call:
        return finish(skipped="helper call")
    # what the stages before this one made of the messages memory has not stored yet: that is what
    # cw_turn_complete stores (a privacy stage's redactions stay redacted)
    produced.capture(ctx, _ingest_start(ctx, history_items(ctx.api, ctx.original))[0])
    if not m.inject:
        return finish(skipped="inject off")
    svc = memory_service.get_service(ctx.runtime)
    if svc is None or not svc.ready.is_set():
        return finish(skipped="starting")
    if not svc.available:
        return finish(skipped="unavailable", error=svc.error)
    try:
        _retrieve_and_inject(ctx, svc, t0, result, finish)
    except Exception as e:  # memory is an extra: the request goes on with the other stages' work
        ctx.emit("error", where="memory", message=f"{type(e).__name__}: {e}", action="forwarded without memory")
        finish(skipped="error", injected=0, ids=[], scores=[], tokens=0)


WHY_SKIPPED = {  # the memory event's "why" (the TUI shows it) when nothing was injected
    "no content words": "nothing to look for: the message has no content words (a greeting, an acknowledgement, "
                        "an agent's own reminder)",
    "no user text": "nothing to look for: no text a person wrote",
    "tool loop step": "a tool-loop step: memory went with the person's message",
    "helper call": "the client's own helper call (a title or topic prompt): memory neither serves nor stores it",
    "nothing relevant": "nothing relevant: no stored item came above the relevance floor",
    "no candidates": "nothing stored that matches",
    "active topics": "what matched is on topics the history still holds",
    "own session": "an agent's session: what our rewrites took of its own, the stubs name and recall puts back",
    "nothing new": "an agent's session: nothing found by both the message's words and its meaning that this "
                   "conversation has not had and that names something the request does not hold",
    "no room": "no room left in the context window",
    "starting": "memory is starting",
    "inject off": "memory.inject is off (remembering only)",
    "timeout": "the search did not finish in time; the request went without memory",
    "unavailable": "memory is unavailable",
    "error": "memory failed; the request went without it",
}


def _why(result: dict) -> str:
    """A short reason for the ``memory`` event: why nothing was injected, or why these items."""
    if not result.get("injected"):
        skipped = str(result.get("skipped") or "")
        return WHY_SKIPPED.get(skipped, skipped or "nothing injected")
    n, sessions = result["injected"], len(result.get("sessions") or ())
    sims = [x["vector"] for x in result.get("scores") or () if x.get("vector") is not None]
    words = ", ".join(result.get("matched") or ()) or "meaning only"
    sim = f", similarity up to {max(sims):.2f}" if sims else ""
    passed = result.get("agreed")
    floor = (f"; under the relevance floor {passed['floor']:.2f}, passed by agreement: both rankings put an item "
             f"holding \"{passed['word']}\" in their top {AGREED_DEPTH}") if passed else ""
    return (f"{n} item{'s' * (n != 1)} from {sessions} session{'s' * (sessions != 1)} the history no longer "
            f"holds; matched on {words}{sim}{floor}")


PREFETCH_NOTE = "memory_prefetch"  # ctx.notes: (token, query) of the search cw_request_start began


@hookimpl
def cw_request_start(ctx) -> None:
    """A person's message: start its search's vector half in the memory service now (embedding the
    query, the vector query), so that it runs while clearing, compression and compaction do; the stage
    finishes the search (the BM25 half and the fusion, which need the outgoing request) with it. Only
    the query and who asks go ahead, and nothing is used unless the stage builds the same query: the
    results are the same as without it (``memory.prefetch``)."""
    m = ctx.settings.memory
    if not (m.enabled and m.inject and m.prefetch):
        return
    svc = memory_service.get_service(ctx.runtime)
    if svc is None or not svc.available or not hasattr(svc, "prepare"):
        return
    original = history_items(ctx.api, ctx.original)
    last = last_user_index(original, role_of)
    if last is None or (not m.inject_tool_steps and not human_text(ctx.api, original[last]).strip()):
        return  # no user message, or a tool-loop step (the stage skips those): most requests, so cheaply
    query, _skipped = _query(ctx, original, clean_text_ahead(ctx))
    if query is None:
        return
    token = f"{ctx.flow_id}:{time.perf_counter_ns()}"
    if svc.prepare(token, query, [ctx.tenant], workspace=m.shared_workspace, settings=ctx.settings,
                   session=ctx.session, project=request_project(ctx)) is not False:
        ctx.notes[PREFETCH_NOTE] = (token, query)


SEARCH_SHARE = 0.8  # of the stage's budget, for everything up to the end of the search; the rest selects and injects


def retrieval_deadline(ctx, t0: float) -> tuple[float, float, str]:
    """When retrieval must give up (a ``perf_counter`` time), that limit in ms from ``t0`` (the stage's
    start), and which budget sets it: ``memory.timeout_ms``, or the stage's own budget (``ctx.deadline``,
    adaptive) less the time the rest of the stage needs, whichever comes first."""
    m = ctx.settings.memory
    own = t0 + m.timeout_ms / 1000
    if ctx.deadline is not None and ctx.budget_ms is not None:
        search_ms = SEARCH_SHARE * ctx.budget_ms
        end = ctx.deadline - (ctx.budget_ms - search_ms) / 1000
        if end < own:
            return end, search_ms, f"the memory stage's {ctx.budget_ms:.0f} ms budget ({search_ms:.0f} ms of it for the search)"
    return own, m.timeout_ms, f"memory.timeout_ms ({m.timeout_ms:.0f} ms)"


def _query(ctx, original: list, clean_text) -> tuple:
    """The request's query, or None and why there is none to search for: no text a person wrote, a
    tool-loop step, nowhere to put a block. The stage and its search started ahead
    (:func:`cw_request_start`) decide the same way."""
    query, qi = build_query(ctx.api, _upto_spoken(ctx, original), clean_text)
    if query is None:
        return None, "no user text"
    if not content_words(query.text):  # "hello", "thanks", "go on", an agent's reminder alone
        return None, "no content words"
    if not ctx.settings.memory.inject_tool_steps and qi != last_user_index(original, role_of):
        # a tool-loop step: the block went with the person's message when it was sent; sending it again
        # with every step is new input each time, for what the model has already acted on
        return None, "tool loop step"
    try:
        dialect(ctx.api).injectable(ctx.request)  # e.g. the last message is a tool's
    except NotInjectable as e:
        return None, str(e)
    return query, None


def _upto_spoken(ctx, original: list) -> list:
    """``original`` up to the message ``build_query`` looks for (the last one with text a person wrote),
    found from the flags the tagging stage remembers with each prepared message: the walk back over a
    tool loop's results is not done again on every request."""
    h = ctx.history
    if h is None or len(h.entries) != len(original):
        return original
    i = last_spoken(ctx, [e.obj for e in h.entries])
    return original[: i + 1] if i is not None else []


def _retrieve_and_inject(ctx, svc, t0: float, result: dict, finish) -> None:
    m = ctx.settings.memory
    original = history_items(ctx.api, ctx.original)
    query, skipped = _query(ctx, original, ctx.notes.get("clean_text") or {})
    if query is None:
        return finish(skipped=skipped)
    budget, overhead = block_room(ctx, int(m.budget_fraction * ctx.settings.tokens.context_window))
    if budget < MIN_BUDGET:
        return finish(skipped="no room", budget=max(0, budget))
    th = time.perf_counter()
    exclude = HistoryIndex(history_texts(ctx.api, ctx.request), ctx.runtime.memo("memory.text_keys", text_keys_cache))
    history_ms = round((time.perf_counter() - th) * 1000, 2)
    deadline, limit_ms, against = retrieval_deadline(ctx, t0)

    def give_up(detail: str) -> None:
        # graceful: the request goes on without memory (no error: the stage did not fail or overrun)
        after = round((time.perf_counter() - t0) * 1000, 1)  # one value for the field and the sentence
        finish(skipped="timeout", budget=budget, gave_up_after_ms=after, deadline_ms=round(limit_ms, 1),
               against=against, gave_up=f"retrieval gave up after {after:.0f} ms against {against}: {detail}")

    if time.perf_counter() >= deadline:
        return give_up("no time left for the search")
    ahead = ctx.notes.pop(PREFETCH_NOTE, None)  # cw_request_start began this very search's vector half
    extra = {"prepared": ahead[0]} if ahead is not None and ahead[1] == query else {}
    try:
        ret = svc.search(query, [ctx.tenant], workspace=m.shared_workspace, exclude=exclude,
                         timeout_s=max(0.0, deadline - time.perf_counter()), settings=ctx.settings,
                         session=ctx.session, project=request_project(ctx), **extra)
    except TimeoutError as e:
        return give_up(str(e))
    if ret.skipped:
        return finish(skipped=ret.skipped, budget=budget)
    sent = ClientHistory(ctx)
    ret, own = other_sessions_only(ctx, ret, sent)
    if own and not ret.hits:
        return finish(skipped="own session", budget=budget, candidates=ret.candidates, own_session=own)
    best = max((h.vector for h in ret.hits if h.vector is not None), default=None)
    by = None  # under the relevance floor, a hit both rankings agree on (agreed()) lets the block go
    if best is not None and best < m.relevance_floor and (by := agreed(ret, query.text)) is None:
        return finish(skipped="nothing relevant", budget=budget, candidates=ret.candidates, best_similarity=round(best, 4),
                      why=f"nothing relevant: the best match's similarity {best:.2f} is under the relevance floor "
                          f"{m.relevance_floor:.2f} (memory.relevance_floor)")
    ts = time.perf_counter()
    hits = select(ret, budget=budget, top_k=m.top_k, cost=lambda it: _item_tokens(ctx, it),
                  min_score=m.min_score, active_tags=set(ctx.notes.get("active_tags") or ()))
    ret.timings.update(history_ms=history_ms, search_ms=ret.ms, select_ms=round((time.perf_counter() - ts) * 1000, 2))
    info = {"budget": budget, "candidates": ret.candidates, "in_history": ret.in_history,
            "active_skipped": ret.active, "mode": ret.mode, "timings": ret.timings, "workspace": m.shared_workspace}
    if by is not None:  # under the relevance floor, passed by both rankings' agreement
        info["agreed"] = {"id": by[0].item.memory_id, "word": by[1], "best_similarity": round(best or 0.0, 4),
                          "floor": m.relevance_floor}
    if not hits:
        reason = "active topics" if ret.active else ("nothing relevant" if ret.candidates else "no candidates")
        return finish(skipped=reason, **info)
    agent = m.agent_new_only and sent.agent
    if agent:
        hits, given = worth_giving(ctx, hits, sent)
        if not hits:
            return finish(skipped="nothing new", **info)
    # (the weakest go while the block, headings included, is over the room)
    block, k, block_tokens = fit_block([h.item for h in hits], budget + overhead, lambda t: count_tokens(ctx, t))
    del hits[k:]
    try:
        where = dialect(ctx.api).inject(ctx.request, block)
    except NotInjectable as e:
        return finish(skipped=str(e), **info)
    if agent and ctx.history is not None:
        ctx.history.carry_on(GIVEN_SLOT, 0, given | {h.item.memory_id for h in hits})
    # the words of the item the word ranking put highest (the block's first may be a reply found by what it answers)
    lexical_top = min(hits, key=lambda h: math.inf if h.lexical_rank is None else h.lexical_rank)
    top = set(tokenize(lexical_top.item.text))
    matched = [w for w in dict.fromkeys(content_words(query.text)) if w in top][:5]
    finish(injected=len(hits), tokens=block_tokens, ids=[h.item.memory_id for h in hits], matched=matched,
           scores=[h.scores() for h in hits], where=where, own_session=own,
           sessions=sorted({str(h.item.session) for h in hits}), **info)


@dataclass
class ClientHistory:
    """What the client's own request holds, for the checks of an agent's session: each read once per
    request, and its texts walked once for both (:func:`other_sessions_only`, :func:`worth_giving`)."""

    ctx: Any  # the RequestContext

    @cached_property
    def agent(self) -> bool:
        """Whether the request's history holds tool calls: an agent at work (a coding client's session)."""
        ctx = self.ctx
        d = dialect(ctx.api)
        return bool(d.tool_calls(d.messages_of(ctx.original) or []))

    @cached_property
    def texts(self) -> list[str]:
        return history_texts(self.ctx.api, self.ctx.original)

    @cached_property
    def index(self) -> HistoryIndex:
        """The index of its texts, read message by message as the conversation grows: what the previous
        search of the conversation indexed about its first messages, and the texts of those since. (Built
        whole, every search keyed the texts the request no longer holds again: 50 long sessions outgrow the
        runtime's memo of texts' keys, and 15 ms a search went there under bench/load_bench.py.)"""
        ctx = self.ctx
        empty = HistoryIndex(keys=ctx.runtime.memo("memory.text_keys", text_keys_cache))
        return read_carried(ctx, SENT_SLOT, lambda api, msgs, known: known.with_texts(message_texts(api, msgs)), empty)

    @cached_property
    def names(self) -> set[str]:
        """The names (paths, identifiers) its texts hold."""
        memo = self.ctx.runtime.memo("memory.names", lambda: LRU(50_000))
        held: set[str] = set()
        for text in self.texts:
            held |= memo.get(text, names, text)
        return held


def other_sessions_only(ctx, ret: Retrieval, sent: ClientHistory) -> tuple[Retrieval, int]:
    """In an agent's session, the search's hits without the session's own items that the client still
    sends (unless ``memory.agent_own_session``), and how many were left out. What clearing and compaction
    took of those their stubs and summary name by id, and automatic recall puts back what an answer
    quotes. What the client's own history no longer holds (its own compaction, a /compact, a subagent's
    work) no stub names, and still comes back (docs/REPLAY.md, "What memory costs in a coding session")."""
    session = str(ctx.session)
    own = any(str(h.item.session) == session for h in ret.hits)
    if ctx.settings.memory.agent_own_session or not own or not sent.agent:  # (that one walks the history)
        return ret, 0
    kept = [h for h in ret.hits if str(h.item.session) != session or h.item not in sent.index]
    return (replace(ret, hits=kept), len(ret.hits) - len(kept)) if len(kept) < len(ret.hits) else (ret, 0)


SENT_SLOT = "memory.sent"  # conversation slot: the HistoryIndex of its messages but the last (ClientHistory.index)
GIVEN_SLOT = "memory.given"  # conversation slot: the memory ids its blocks gave (an agent's session)


def worth_giving(ctx, hits: list[Hit], sent: ClientHistory) -> tuple[list[Hit], frozenset[str]]:
    """In an agent's session (``memory.agent_new_only``), the block's items likely to pay for their
    tokens, and the ids this conversation's blocks gave before. A block there is new input that the
    model reads once; what it takes from it goes into its answer and tool calls, which the history
    keeps. So an item goes when the message's words and its meaning both found it (not a neighbour
    only, not one ranking alone), this conversation has not had it yet (the set starts again with
    a new conversation: after the client's own compaction, a subagent), and, unless a person wrote
    it, it names something (a path, an identifier) the client's request does not hold: the
    request's work is on exact strings. A conversation without tool calls (a chat) is not affected
    (docs/REPLAY.md, "What memory costs in a coding session")."""
    got = ctx.history.carried(GIVEN_SLOT) if ctx.history is not None else None
    given: frozenset[str] = got[1] if got is not None else frozenset()
    kept = [h for h in hits if h.vector_rank is not None and h.lexical_rank is not None
            and h.item.memory_id not in given and (h.item.role == "user" or not names(h.item.text) <= sent.names)]
    return kept, given


# --- remembering -----------------------------------------------------------------------------------------
def _fingerprint(api: ApiKind, msg) -> str:
    """A message's identity for the ingestion marker: role and content without cache_control (Claude
    Code moves its breakpoints every turn; that must not look like a rewritten history)."""
    m = msg.wire() if hasattr(msg, "wire") else msg
    return hashlib.blake2b(orjson.dumps(strip_cache_control(m), option=orjson.OPT_SORT_KEYS, default=str),
                           digest_size=12).hexdigest()


def _result_index(msgs: list) -> dict[str, int]:
    """tool call id -> index of the message holding its result."""
    out: dict[str, int] = {}
    for i, m in enumerate(msgs):
        m = m.wire() if hasattr(m, "wire") else m
        if not isinstance(m, dict):
            continue
        for key in ("tool_call_id", "call_id"):
            if isinstance(m.get(key), str):
                out[m[key]] = i
        c = m.get("content")
        if isinstance(c, list):
            for b in c:
                if isinstance(b, dict) and isinstance(b.get("tool_use_id"), str):
                    out[b["tool_use_id"]] = i
    return out


def _stubbed_items(ctx, msgs: list, workspace: str | None) -> list:
    """Tool results the clearing and compaction stages replaced for the first time in this request, as
    items whose ``source_id`` is the id their stub names (normally already stored when their turn
    completed; this covers a memory that was off or lost then; the store deduplicates)."""
    entries = [e for e in (ctx.notes.get("cleared") or []) + (ctx.notes.get("compacted") or [])
               if e.get("new") is not False and e.get("text") and e.get("memory_id")]
    if not entries:
        return []
    where = _result_index(msgs)
    out = []
    for entry in entries:
        turn = where.get(entry.get("tool_use_id"), entry.get("message_index"))
        out.append(MemoryItem(text=entry["text"], session=ctx.session, tenant=ctx.tenant,
                              turn=int(turn) if isinstance(turn, int) else 0, role="tool",
                              kind="tool_result", tool=entry.get("tool"), workspace=workspace,
                              source_id=entry["memory_id"]))
    return out


HISTORY_MIN_MESSAGES = 3  # a first request holding this many messages resumes a conversation
_GONE = {"role": "assistant", "content": ""}  # a message that did not go upstream as such: nothing stored


START_NOTE = "memory_ingest_start"  # ctx.notes: (start, history) of _ingest_start, worked out once a request


def _ingest_start(ctx, msgs: list) -> tuple[int, bool]:
    """The first request message memory has not stored yet, and whether the messages before the current
    turn are history the proxy had not seen live (the session's first request resuming a conversation).
    Read once per request (the memory stage, then cw_turn_complete reuse it), through the runtime's
    state cache (with a shared store, one round trip)."""
    got = ctx.notes.get(START_NOTE)
    if got is not None:
        return got
    mark = state_cache(ctx.runtime).get(STATE_NS, f"{ctx.tenant}:{ctx.session}") or {}
    start = int(mark.get("n", 0))
    # history: a conversation's first request already holding earlier messages; not a live session's next
    # request that came before its previous turn was stored (the marker is written when a turn completes)
    conv = ctx.history.conv if ctx.history is not None else None
    history = not mark and len(msgs) >= HISTORY_MIN_MESSAGES and (conv is None or conv.requests <= 1)
    if start > len(msgs) or (start and _fingerprint(ctx.api, msgs[start - 1]) != mark.get("h")):
        start = 0  # the client rewrote its history (its own compaction, a fork): store what is new to the store
    ctx.notes[START_NOTE] = (start, history)
    return start, history


def items_for_turn(ctx, turn, tagger) -> tuple[list, int, bool]:
    """The items a completed turn adds to memory (the request's messages not stored before, and the
    assistant's reply), the new ingestion marker (how many request messages are now stored), and
    whether the items are history the proxy had not seen live: the first request of a session (no
    marker) already holding earlier messages (a resumed conversation)."""
    m = ctx.settings.memory
    msgs = history_items(ctx.api, ctx.original)
    start, history = _ingest_start(ctx, msgs)
    # the messages as the stages produced them (None: compacted away, not stored from this request)
    made = produced.to_store(ctx, msgs, start)
    source = list(msgs) if made is None else msgs[:start] + made
    raw_clean = ctx.notes.get("clean_text") or {}
    clean = {}
    for i in range(start, len(msgs)):
        c = raw_clean.get(i)
        if c is not None and source[i] is not None and role_of(source[i]) == "user":
            h = human_text(ctx.api, source[i])
            if c != h and len(c) <= len(h):  # envelopes removed, and no tool results mixed in
                clean[i] = c
    ws = m.shared_workspace
    kept = [m if m is not None else _GONE for m in source[start:]]  # keeps each message's number
    items = items_from_messages(kept, ctx.api, ctx.session, ctx.tenant, start, clean_text=clean, workspace=ws)
    answer = getattr(turn, "message", None)
    if isinstance(answer, dict) and not getattr(turn, "error", None):
        items += items_from_messages(dialect(ctx.api).answer_messages(answer), ctx.api, ctx.session, ctx.tenant,
                                     len(msgs), workspace=ws)
    items += _stubbed_items(ctx, msgs, ws)
    out = []
    project = request_project(ctx)  # stored with each item: retrieval ranks the current project's next
    for it in items:
        it.text = strip_blocks(it.text)
        if it.text.strip():
            it.tags = topical(tagger.tag(it.text))
            it.project = project
            out.append(it)
    return out, len(msgs), history


@hookimpl
def cw_turn_complete(ctx, turn) -> None:
    if ctx is None or not ctx.settings.memory.enabled or ctx.helper_call:
        return
    svc = memory_service.get_service(ctx.runtime)
    if svc is None or not svc.ready.wait(10) or not svc.available:
        return
    items, n, history = items_for_turn(ctx, turn, svc.tagger)
    if not items or svc.submit(items, flow_id=ctx.flow_id, history=history,
                               messages=n if history else None):
        msgs = history_items(ctx.api, ctx.original)
        if msgs:
            # written within a second, with the other sessions' markers: not on each turn's clock (the
            # store's lock is every request's, and the next turns' items waited behind it under load)
            state_cache(ctx.runtime).put(STATE_NS, f"{ctx.tenant}:{ctx.session}",
                                         {"n": n, "h": _fingerprint(ctx.api, msgs[n - 1])}, soon=True)
