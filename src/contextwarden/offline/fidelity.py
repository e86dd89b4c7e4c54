"""Fidelity: what the model used next, and whether what we would have sent still held it.

Per request, the recorded answer's *edit sources* (the ``old_string`` of each Edit, line by line, the
ends possibly parts of a line) and *references* (distinctive strings of its text and tool inputs found
in a tool result of the client's body) are looked up in the body we would have sent; what ours lacks is
*lost*, and each tool result that held lost content costs one extra round trip (the penalty). docs/REPLAY.md
gives the exact tests and what they cannot see.

Each text is indexed once (:class:`Indexer`: line hashes and tokens, memoised by the text), and a
conversation's body index is kept from one request to the next with only the texts after the first
difference taken out and the new ones put in (:class:`Incremental`): a request costs what its new texts cost.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from ..util.lru import LRU
from ..wire.conversation import result_text
from ..wire.cost import READ_MULT, Price, price_for
from ..wire.references import _WORD, _lines, _tokens, answer_items, strings

MEMO = 50_000  # texts whose index is remembered (least recently used out)
EXAMPLES = 5  # lost items kept per request for --requests


@dataclass(frozen=True, slots=True)
class TextIndex:
    lines: frozenset  # hashes of the normalised lines
    tokens: frozenset  # words, distinctive tokens and path suffixes


class Indexer:
    """Indexes texts once (memoised by the text)."""

    def __init__(self, memo: int = MEMO) -> None:
        self._memo = LRU(memo)

    def text(self, text: str) -> TextIndex:
        got = self._memo.young.get(text)
        return got if got is not None else self._memo.get(text, _index, text)


def _index(text: str) -> TextIndex:
    return TextIndex(frozenset(hash(s) for s in _lines(text)), frozenset(_tokens(text)))


def _part_of_a_line(ix, ln: str) -> bool:
    words = _WORD.findall(ln)
    if len(words) == 1:
        return words[0] in ix.tokens
    return all(f"{a} {b}" in ix.tokens for a, b in zip(words, words[1:]))


def has_source(ix, lines: list[str]) -> bool:
    """Every whole line of an edit source is a line of ``ix``; the ends (possibly parts of a line) are
    lines there or have all their word pairs there."""
    last = len(lines) - 1
    for i, ln in enumerate(lines):
        if hash(ln) in ix.lines:
            continue
        if (i == 0 or i == last) and _part_of_a_line(ix, ln):
            continue
        return False
    return True


class Incremental:
    """The index of the bodies of a conversation, kept from one request to the next: a body shares
    its leading texts with the previous body of the same conversation (the history is re-sent), so
    only the texts after the first difference are taken out and the new ones put in. Counts, not sets,
    so a text can be taken out. Conversations (the main agent, subagents, a summarised restart) are
    told apart by their first text; a few are kept."""

    def __init__(self, indexer: Indexer, streams: int = 8) -> None:
        self.ix = indexer
        self._streams = LRU(streams)

    def index(self, texts: list[str]) -> BodyIndex:
        st: BodyIndex = self._streams.get(texts[0] if texts else "", lambda: BodyIndex(Counter(), Counter(), []))
        old = st.texts
        k, n = 0, min(len(old), len(texts))
        while k < n and old[k] == texts[k]:
            k += 1
        if len(old) - k > k:  # more to take out than to keep: start again
            st.lines, st.tokens, k = Counter(), Counter(), 0
        else:
            for t in old[k:]:
                ti = self.ix.text(t)
                _take(st.lines, ti.lines)
                _take(st.tokens, ti.tokens)
        for t in texts[k:]:
            ti = self.ix.text(t)
            st.lines.update(ti.lines)
            st.tokens.update(ti.tokens)
        st.texts = list(texts)
        return st


def _take(counts: Counter, items: Iterable) -> None:
    for x in items:
        c = counts[x] - 1
        if c > 0:
            counts[x] = c
        else:
            del counts[x]


@dataclass(slots=True)
class BodyIndex:
    lines: Any  # a set, or a Counter (Incremental: a text can be taken out)
    tokens: Any
    texts: list[str] = field(default_factory=list)  # what it indexes (Incremental)

    def has_source(self, lines: list[str]) -> bool:
        return has_source(self, lines)

    def has_ref(self, ref: str) -> bool:
        return ref in self.tokens


# ---------------------------------------------------------------------------- bodies and answers


def _blocks(content: Any) -> list:
    """A message's content as blocks (a string: one text block, none when empty)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


Parts = tuple[tuple[str, ...], tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]


def message_parts(m: Any) -> Parts:
    """(texts, tool calls as (id, name), tool results as (tool_use_id, text)) of one message.

    Texts: text blocks (a compaction summary, injected memory), tool results, the string values of
    tool calls' inputs. Thinking is left out (the same on both sides)."""
    texts: list[str] = []
    uses: list[tuple[str, str]] = []
    results: list[tuple[str, str]] = []
    if isinstance(m, dict):
        for b in _blocks(m.get("content")):
            t = b.get("type")
            if t == "text" and isinstance(b.get("text"), str):
                texts.append(b["text"])
            elif t == "tool_use":
                uses.append((str(b.get("id")), str(b.get("name") or "?")))
                texts.extend(strings(b.get("input")))
            elif t == "tool_result":
                txt = result_text(b.get("content"))
                texts.append(txt)
                results.append((str(b.get("tool_use_id")), txt))
    return tuple(texts), tuple(uses), tuple(results)


def body_texts(body: dict | None, parts=message_parts) -> tuple[list[str], list[tuple[str, str, str]]]:
    """(every text of the messages, the tool results as (tool name, tool_use_id, text)); the system
    prompt is left out (the replay's is a stand-in, the same on both sides)."""
    texts: list[str] = []
    results: list[tuple[str, str, str]] = []
    tools: dict[str, str] = {}
    for m in (body or {}).get("messages") or []:
        t, uses, res = parts(m)
        texts.extend(t)
        tools.update(uses)
        results.extend((tools.get(tid, "?"), tid, txt) for tid, txt in res)
    return texts, results


class PartsMemo:
    """``message_parts`` memoised by the message's JSON bytes: the history is re-sent with every
    request, and encoding a message is much cheaper than walking it."""

    def __init__(self, size: int = MEMO) -> None:
        self._memo = LRU(size)

    def __call__(self, m: Any) -> Parts:
        try:
            key = orjson.dumps(m)
        except TypeError:
            return message_parts(m)
        got: Parts = self._memo.get(key, message_parts, m)
        return got


@dataclass
class Fidelity:
    """One request's counts (sources/references the answer used that the client's body held, and how
    many of them ours lost), where the lost ones came from, and the penalty estimate."""

    sources: int = 0
    sources_lost: int = 0
    refs: int = 0
    refs_lost: int = 0
    by_tool: dict[str, int] = field(default_factory=dict)  # lost items by the tool whose result held them
    by_stage: dict[str, int] = field(default_factory=dict)  # cleared (a stub kept its id) / dropped (compacted or truncated away) / other
    round_trips: int = 0
    penalty: float = 0.0
    lost: list[str] = field(default_factory=list)  # examples
    ms: float = 0.0  # time the count took (replay stays linear: see the module doc)
    # every lost item: kind ("source" / "ref"), what (the old_string or the reference), tool and
    # tool_use_id of the client's result that held it, stage (cleared / dropped / other)
    items: list[dict[str, str]] = field(default_factory=list)
    # of the items the previous request of this conversation lost (``back_of``), how many this request
    # carries again in what the recall stage injected (``back``), and anywhere but in the previous
    # answer itself and the new tool results (a re-read the model asked for): ``present``
    back: int = 0
    back_of: int = 0
    present: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ms": round(self.ms, 3)}


def _short(s: str, n: int = 60) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "…"


@dataclass(frozen=True, slots=True)
class _Lost:
    """What a conversation's last request lost (``items``), and the texts of that request's answer."""

    items: list[dict[str, str]]
    answer: frozenset


class FidelityCounter:
    """Counts one trace's requests; holds the text memo across them (the history repeats)."""

    def __init__(self, count_text=None, prices: Mapping[str, Any] | None = None) -> None:
        self.prices = prices  # the user's (settings ``prices``), before the table
        self.ix = Indexer()
        self._parts = PartsMemo()
        self._orig, self._results, self._sent = Incremental(self.ix), Incremental(self.ix), Incremental(self.ix)
        self._count = count_text or (lambda s: max(1, len(s) // 4))
        self._pending = LRU(64)  # conversation -> _Lost by its last request

    def request(self, original: dict, sent: dict | None, response: dict | None, model: str | None = None,
                tokens_sent: int = 0, factor: float = 1.0, recalled: list[str] | None = None) -> Fidelity:
        """``tokens_sent``: our count of the body we sent (the round trip re-reads it); ``factor``
        converts our counts into billed tokens (the replay's size fit); ``recalled``: the texts the
        recall stage injected into this request (what it put back of the previous request's losses)."""
        t0 = time.perf_counter()
        conv = self._conversation(original)
        pending = self._pending.peek(conv)
        fid = self._request(original, sent, response, model, tokens_sent, factor)
        if pending:
            self._put_back(fid, pending.items, pending.answer, sent if sent is not None else original, recalled or [])
        if fid.items:
            # (the answer itself, re-sent in the next request, does not hold what it used)
            self._pending.put(conv, _Lost(fid.items, frozenset(message_parts(response or {})[0])))
        else:
            self._pending.pop(conv)
        fid.ms = (time.perf_counter() - t0) * 1000
        return fid

    def _conversation(self, body: dict) -> str:
        msgs = (body or {}).get("messages") or []
        texts = self._parts(msgs[0])[0] if msgs else ()
        return texts[0] if texts else ""

    def _put_back(self, fid: Fidelity, items: list[dict[str, str]], answer: frozenset, sent: dict,
                  recalled: list[str]) -> None:
        """Of the previous request's lost items, those this one carries in what recall injected, and
        those it carries anywhere but in the previous answer and the new tool results (a recalled block,
        memory, a re-applied rewrite that no longer takes it out)."""
        back = self._union(recalled)
        msgs = (sent or {}).get("messages") or []
        u_texts, _ = body_texts({"messages": msgs[:-1]}, self._parts)
        if msgs:  # the new message: what was injected into it, not the new tool results (a re-read)
            texts, _, res = self._parts(msgs[-1])
            new_results = {t for _, t in res}
            u_texts += [t for t in texts if t not in new_results]
        body = self._union(t for t in u_texts if t not in answer)
        for it in items:
            lines = _lines(it["what"]) if it["kind"] == "source" else None

            def holds(ix: BodyIndex) -> bool:
                return ix.has_source(lines) if lines is not None else ix.has_ref(it["what"])
            fid.back_of += 1
            if recalled and holds(back):
                fid.back += 1
            if holds(body):
                fid.present += 1

    def _union(self, texts: Iterable[str]) -> BodyIndex:
        lines: set[int] = set()
        tokens: set[str] = set()
        for t in texts:
            ti = self.ix.text(t)
            lines |= ti.lines
            tokens |= ti.tokens
        return BodyIndex(lines, tokens)

    def _request(self, original: dict, sent: dict | None, response: dict | None, model: str | None,
                 tokens_sent: int, factor: float) -> Fidelity:
        ans = answer_items(response)
        fid = Fidelity()
        if not ans.sources and not ans.refs:
            return fid
        o_texts, o_results = body_texts(original, self._parts)
        sources = refs = []
        if ans.sources:  # (each index only when the answer has something to look up in it)
            o_all = self._orig.index(o_texts)
            sources = [(ls, raw) for ls, raw in ans.sources if o_all.has_source(ls)]
        if ans.refs:
            o_res = self._results.index([t for _, _, t in o_results])
            refs = sorted(r for r in ans.refs if o_res.has_ref(r))
        fid.sources, fid.refs = len(sources), len(refs)
        if sent is None or sent is original or not (sources or refs):
            return fid
        u_texts, u_results = body_texts(sent, self._parts)
        ours = self._sent.index(u_texts)
        lost_s = [(ls, raw) for ls, raw in sources if not ours.has_source(ls)]
        lost_r = [r for r in refs if not ours.has_ref(r)]
        fid.sources_lost, fid.refs_lost = len(lost_s), len(lost_r)
        if not (lost_s or lost_r):
            return fid
        # where the lost content was: the client's tool results that held it (first one found)
        kept_ids = {tid for _, tid, _ in u_results}
        origins: dict[str, tuple[str, str]] = {}  # tool_use_id -> (tool, text)
        by_tool: Counter = Counter()
        by_stage: Counter = Counter()

        def origin(kind: str, what: str, test) -> None:
            if len(fid.lost) < EXAMPLES:
                fid.lost.append(("edit source: " if kind == "source" else "reference: ") + _short(what))
            tool, tid, stage = "", "", "other"
            for name, t, txt in reversed(o_results):  # the latest result that held it
                if test(self.ix.text(txt)):
                    origins[t] = (name, txt)
                    tool, tid, stage = name, t, "cleared" if t in kept_ids else "dropped"
                    break
            by_tool[tool or "(not a tool result)"] += 1  # (a result's tool is named, "?" at least)
            by_stage[stage] += 1
            fid.items.append({"kind": kind, "what": what, "tool": tool, "tool_use_id": tid, "stage": stage})

        for ls, raw in lost_s:
            origin("source", raw, lambda ix, ls=ls: has_source(ix, ls))
        for r in lost_r:
            origin("ref", r, lambda ix, r=r: r in ix.tokens)
        fid.by_tool, fid.by_stage = dict(by_tool), dict(by_stage)
        fid.round_trips = len(origins) + (by_stage.get("other", 0) and 1)
        fid.penalty = round_trip_cost(price_for(model, self.prices), tokens_sent, [self._count(t) for _, t in origins.values()],
                                      factor, extra_trips=fid.round_trips - len(origins))
        return fid


CALL_OUTPUT_TOKENS = 60  # a tool call's output (name, a path): what the model writes to ask again


def round_trip_cost(p: Price, prefix_tokens: int, result_tokens: list[int], factor: float = 1.0,
                    extra_trips: int = 0) -> float:
    """Dollars of the extra round trips: per trip, the prefix read from cache (0.1x input) and the call
    as output; per result, its tokens as new input (1x). ``extra_trips`` are trips whose result size is
    unknown (counted for the prefix and the call only)."""
    trips = len(result_tokens) + extra_trips
    inp = trips * prefix_tokens * factor * READ_MULT + sum(result_tokens) * factor
    return (inp * p.input + trips * CALL_OUTPUT_TOKENS * p.output) / 1e6


SUMMED = ("sources", "sources_lost", "refs", "refs_lost", "round_trips", "penalty", "ms", "back", "back_of", "present")


def totals(fids: Iterable[Fidelity]) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(SUMMED, 0) | {"penalty": 0.0, "ms": 0.0}
    by_tool: Counter = Counter()
    by_stage: Counter = Counter()
    for f in fids:
        for k in SUMMED:
            out[k] += getattr(f, k)
        by_tool.update(f.by_tool)
        by_stage.update(f.by_stage)
    out["sources_lost_share"] = out["sources_lost"] / out["sources"] if out["sources"] else 0.0
    out["refs_lost_share"] = out["refs_lost"] / out["refs"] if out["refs"] else 0.0
    out["by_tool"], out["by_stage"] = dict(by_tool.most_common()), dict(by_stage.most_common())
    return out
