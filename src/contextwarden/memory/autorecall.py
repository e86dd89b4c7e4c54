"""Automatic recall: what the model's latest answer refers to that only cleared or compacted content holds.

A way back that needs the model's cooperation is rarely taken, so this needs none. The references are
the ones a reader of the answer would follow:

- a memory id (``m-`` + 16 hex) the model read in a stub or a summary;
- a string a tool call of the answer quotes (an Edit's ``old_string``, a search pattern: 12 characters
  or more) that a lost text holds (as it is, or line by line as a Read shows it, with line numbers) and
  the request no longer does: brought back even when it was recalled once before;
- a distinctive term of the answer (a path, a snake_case or camelCase identifier, a long hex hash, any
  token the replay's fidelity measure counts as a reference) that a lost text holds and the request no
  longer does (not even an earlier answer): the whole text when at most two lost texts hold it, else
  only the lines around it in the newest of them (a term many hold is the session's vocabulary);
- a path the answer's tool calls name: the newest lost text of that file's content (the Read of the
  file it now edits, or the Write that made it; an Edit's snippet only when there is neither).

"The request no longer holds it": neither a message, nor a tool call, nor a kept tool result; stubs and
compaction summaries do not count (they name things, they do not hold them), nor does the answer itself.
Pure functions here; the ``recall`` stage (``plugins/recall.py``) feeds them and injects what they find.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property, reduce
from operator import attrgetter, or_
from typing import Any

import orjson

from ..util.lru import LRU
from ..wire.references import _lines, _tokens, names
from ..wire.references import strings as _strings
from ..wire.workingset import EDIT_TOOLS, WORKING_HEAD, WRITE_TOOLS
from .prefilter import Prefilter

MID = re.compile(r"\bm-[0-9a-f]{16}\b")
_PATH = re.compile(r"(?<![\w/.-])(?:\.{0,2}/)?(?:[\w.-]+/)+[\w.-]*\w|\b[\w-]+\.(?:py|js|mjs|ts|tsx|jsx|go|rs|java|kt|c|h|"
                   r"cc|cpp|hpp|cs|rb|php|swift|md|rst|json|ya?ml|toml|ini|cfg|txt|sh|sql|css|scss|html|vue|lock)\b")
_IDENT = re.compile(r"\b(?:[A-Za-z][A-Za-z0-9]*_[A-Za-z0-9_]*[A-Za-z0-9]|[a-z]+[A-Z][A-Za-z0-9]*|[A-Z][a-z0-9]+[A-Z][A-Za-z0-9]*)\b")
_HEX = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{8,40}\b")
MIN_TERM = 6
MIN_REF = 5  # the fidelity measure's shortest reference
MIN_QUOTE = 12
MAX_TERM_OWNERS = 2  # a term more lost texts hold is the session's vocabulary, not a reference
PATH_KEYS = ("file_path", "path", "notebook_path")
_SKIP_KEYS = frozenset({"id", "type", "role", "cache_control", "signature", "tool_use_id", "call_id", "name"})
STUB_PREFIX = "[contextwarden cleared this "
SUMMARY_PREFIX = "[contextwarden: summary"


TERMS_CHARS = 100_000  # of a long text, the terms of its first and last 50K characters
# A conversation's lost texts are read into its Prefilter once those it has not read hold more than
# PREFILTER_FROM characters (fewer cost less to test for an answer's terms each time than to read: a
# tool loop of a few dozen steps never gets there), then until none is left, PREFILTER_CHARS a request.
PREFILTER_FROM = 256_000
PREFILTER_CHARS = 64_000  # (~0.5 ms)


def terms(text: str) -> frozenset[str]:
    """The distinctive terms of a text: paths, identifiers, long hex hashes, and every token the replay's
    fidelity measure counts as a reference (:func:`contextwarden.wire.references.distinctive`: a path, a
    dotted name, an identifier with ``_``, digits or camelCase), with a path's suffixes after each slash
    (``/repo/src/a.py`` also answers ``src/a.py``): what the model writes is what the measure checks."""
    if len(text) > TERMS_CHARS:
        text = text[: TERMS_CHARS // 2] + "\n" + text[-TERMS_CHARS // 2:]
    out = set()
    for rx in (_PATH, _IDENT, _HEX):
        for m in rx.finditer(text):
            t = m.group(0).rstrip(".,:;")
            if len(t) >= MIN_TERM:
                out.add(t)
    for tok in names(text):
        if len(tok) >= MIN_REF:
            out.add(tok)
            if "/" in tok:
                parts = tok.split("/")
                out.update(x for x in ("/".join(parts[i:]) for i in range(1, len(parts))) if len(x) >= MIN_REF)
    return frozenset(out)


@dataclass(frozen=True)
class Memos:
    """A runtime's memos of this module (``runtime.memo("autorecall", Memos.new)``), each bounded on its
    own: a kept text's tokens are keyed by the text itself, so they must not share a count with the
    small per-id entries."""

    terms: LRU  # a lost text's terms (:func:`terms`), by memory id
    lines: LRU  # a lost text's line hashes (:func:`quoted_in`), by memory id
    tokens: LRU  # a kept text's tokens (:meth:`Kept.holds_term`), by the text

    @classmethod
    def new(cls) -> Memos:
        return cls(terms=LRU(4096), lines=LRU(512), tokens=LRU(2048))


def terms_of(key: str, text: str, memo: LRU | None = None) -> frozenset[str]:
    """:func:`terms`, remembered by ``key`` in ``memo`` (a memory id: the same lost text comes back every request)."""
    return terms(text) if memo is None else memo.get(key, lambda: terms(text))


def strings(obj: Any, skip: frozenset[str] = _SKIP_KEYS) -> Iterator[str]:
    """Every string value of a wire message (not ids, types, roles or signatures)."""
    return _strings(obj, skip)


def tool_inputs(msg: Any) -> list[dict]:
    """The inputs of the tool calls in one wire message (Anthropic blocks, chat tool_calls, a Responses item)."""
    out: list[dict] = []
    if not isinstance(msg, dict):
        return out
    c = msg.get("content")
    for b in c if isinstance(c, list) else ():
        if isinstance(b, dict) and b.get("type") == "tool_use" and isinstance(b.get("input"), dict):
            out.append(b["input"])
    calls = list(msg.get("tool_calls") or [])
    if isinstance(msg.get("arguments"), str):
        calls.append({"function": {"arguments": msg["arguments"]}})
    for tc in calls:
        args = (tc.get("function") or {}).get("arguments") if isinstance(tc, dict) else None
        try:
            v = orjson.loads(args) if isinstance(args, str) else None
        except orjson.JSONDecodeError:
            v = None
        if isinstance(v, dict):
            out.append(v)
    return out


@dataclass
class Lost:
    """One text clearing or compaction took out of the request, as the client still sends it."""

    memory_id: str
    text: str
    turn: int
    tool: str | None = None
    tool_input: Any = None
    kind: str = "tool_result"

    @cached_property
    def file_paths(self) -> frozenset[str]:
        """The paths its tool call names when it holds that file's content (a Read's result, a Write's input)."""
        inp = self.tool_input
        if not isinstance(inp, dict) or self.kind != ("tool_input" if self.tool in WRITE_TOOLS else "tool_result"):
            return frozenset()
        return frozenset(v for k in PATH_KEYS if isinstance(v := inp.get(k), str))


@dataclass
class Found:
    lost: Lost
    why: str  # "id" | "quote" | "term" | "path"
    ref: str
    whole: bool = True  # False: only the lines around the reference come back (:func:`excerpt`)


@dataclass
class Answer:
    """What the model's latest answer refers to."""

    text: str = ""
    ids: set[str] = field(default_factory=set)
    quotes: list[str] = field(default_factory=list)
    terms: frozenset[str] = frozenset()
    paths: set[str] = field(default_factory=set)
    recalling: set[str] = field(default_factory=set)  # ids the answer asks the recall tool for itself


def read_answer(msg: Any) -> Answer:
    """The references of one assistant message (wire form)."""
    text = "\n".join(strings(msg))
    a = Answer(text=text, ids=set(MID.findall(text)), terms=terms(text))
    c = msg.get("content") if isinstance(msg, dict) else None
    for b in c if isinstance(c, list) else ():
        if isinstance(b, dict) and b.get("type") == "tool_use" and str(b.get("name", "")).endswith("recall"):
            a.recalling |= set(MID.findall(orjson.dumps(b.get("input")).decode()))
    for inp in tool_inputs(msg):
        for k, v in inp.items():
            if k in PATH_KEYS and isinstance(v, str) and v:
                a.paths.add(v)
            elif isinstance(v, str) and len(v.strip()) >= MIN_QUOTE:
                a.quotes.append(v.strip())
    return a


def find(answer: Answer, lost: list[Lost], kept: Kept, done: set[str], limit: int = 3,
         memo: Memos | None = None, index: TermIndex | None = None) -> list[Found]:
    """The lost texts the answer refers to (not those in ``done``: recalled once already), best first:
    ids, then quotes, then cleared reads of paths the answer names, then terms. ``index``: the
    conversation's :class:`TermIndex` (the terms of the lost texts read so far, and the runs of every
    lost text seen, kept from request to request), so the term search costs what the new lost texts and
    the answer's terms cost, not a substring test of every lost text."""
    out: list[Found] = []
    taken: set[str] = set(answer.recalling)  # what the model asked the recall tool for comes back through it

    def add(item: Lost, why: str, ref: str, again: bool = False, whole: bool = True) -> None:
        """(``again``: even if recalled once before, in an earlier request)"""
        if item.memory_id not in taken and (again or item.memory_id not in done) and len(out) < limit:
            taken.add(item.memory_id)
            out.append(Found(item, why, ref, whole))

    if answer.ids:
        by_id = {x.memory_id: x for x in lost}
        for mid in sorted(answer.ids):
            if mid in by_id:
                add(by_id[mid], "id", mid)
    newest = sorted(lost, key=attrgetter("turn"), reverse=True)  # (stable: as -turn ascending)
    for q in answer.quotes:
        quoting = [x for x in newest if quoted_in(q, x, memo.lines if memo else None)]
        if quoting and not kept.holds(q):
            # an Edit's old_string only a lost text holds: needed now, even if recalled once before
            # (what recall injects goes into one request only; the same file is edited again and again)
            add(quoting[0], "quote", q, again=True)
    if answer.paths:  # per path, the newest lost text of the file: a Read's result or a Write's content before
        # an Edit's result (a snippet of it, which the quotes above bring back; the model goes on editing the file)
        of_path: dict[str, Lost] = {}
        snippet: dict[str, Lost] = {}
        for x in newest:
            for v in x.file_paths & answer.paths if x.file_paths else ():  # (worked out once per lost text)
                (snippet if x.tool in EDIT_TOOLS else of_path).setdefault(v, x)
        for p in sorted(answer.paths):
            if (file := of_path.get(p) or snippet.get(p)) is not None:
                add(file, "path", p)
    if answer.terms:
        index = index if index is not None else TermIndex()
        index.add(index.unread(lost, answer.terms), memo.terms if memo else None)
        held = {t: index.holding(t) for t in answer.terms}
        if not any(held.values()) and not index.has_long():
            return out
        # only the texts that hold a term, or whose middle is asked below: not a map of every lost text
        ask = {mid for mids in held.values() for mid in mids} | index.long_ids()
        rank: dict[int, int] = {}
        same: dict[str, list[Lost]] = {}  # id -> the lost entries of that text (the same text may be lost twice)
        for i, x in enumerate(newest):
            if x.memory_id in ask:
                rank[id(x)] = i
                same.setdefault(x.memory_id, []).append(x)
        owners: dict[str, list[Lost]] = {}
        for t, mids in held.items():
            xs = [x for mid in mids for x in same.get(mid, ())]
            if xs:
                owners[t] = xs
        for mid, own in index.long_terms(same):  # (a text's terms are those of its head and tail: the middle, asked here)
            for x in same[mid]:
                for t in answer.terms:
                    if t not in own and t in x.text and _bounded(t, x.text):
                        owners.setdefault(t, []).append(x)
        for xs in owners.values():
            xs.sort(key=lambda x: rank[id(x)])  # newest first
        pick_terms(owners, kept, done, taken, add)
    return out


def pick_terms(owners: dict[str, list[Lost]], kept: Kept, done: set[str], taken: set[str], add) -> None:
    """Of the answer's terms and the lost texts that hold each (newest first), what comes back (``add``).

    The longest, most specific terms first; a term many lost texts hold (a column name, a common path)
    that the request holds nowhere, not even in an earlier answer, brings back only the lines around it
    in the newest of them (where the model last saw it). The newest not brought back already: one that
    was went into one request only, and an older text holding the term holds what the reference needs as
    well; when all were, the lines around the term in the newest again (a term no message before the
    answer holds: once per term while the answer using it is kept)."""
    for t in sorted(owners, key=lambda t: (len(owners[t]) > MAX_TERM_OWNERS, -len(t), t)):
        xs = owners[t]
        if any(x.memory_id in taken for x in xs) or kept.holds_term(t):
            continue  # coming back anyway, or held
        x = next((x for x in xs if x.memory_id not in done), None)
        if x is not None:
            add(x, "term", t, whole=len(xs) <= MAX_TERM_OWNERS)
        else:
            add(xs[0], "term", t, again=True, whole=False)


class TermIndex:
    """The terms of a conversation's lost texts (:func:`terms`): term -> the ids of the texts that hold
    it. A text's terms are read once, the first time an answer's term is a substring of it
    (:meth:`unread`: terms() of 12 KB of code costs 8-24 ms, and most lost texts are never referred to);
    every later request looks the answer's terms up here. Which texts not read yet hold a term as a
    substring is asked of a :class:`~contextwarden.memory.prefilter.Prefilter` of every lost text's
    runs, read once on sight, so a request tests only the texts it cannot rule out, not all of them.

    A memo of pure functions of the texts (an id names one text), shared by the requests of one
    conversation (``History.carry_on``): entries of texts no longer lost are harmless, as
    :func:`find` keeps only the ids of the request's own lost texts; additions are made under a lock."""

    def __init__(self, read_from: int = PREFILTER_FROM) -> None:
        self._lock = threading.Lock()
        self._owners: dict[str, list[str]] = {}
        self._known: set[str] = set()
        self._long: dict[str, frozenset[str]] = {}  # texts over TERMS_CHARS: their terms (of head and tail only)
        self._entries: dict[int, tuple[Any, Lost | None]] = {}  # (:meth:`entries`)
        self._runs = Prefilter()
        self._read_from, self._reading = read_from, False  # (PREFILTER_FROM)

    def unread(self, lost: list[Lost], terms: frozenset[str]) -> Iterator[Lost]:
        """Of ``lost``, the texts whose terms are not read yet that hold one of ``terms`` as a substring
        (only they can hold it as a term): exactly those a substring test of each finds. The prefilter
        rules out most texts it has read; the others are tested as before. Texts new to it are read
        first, once they hold more than ``read_from`` characters (PREFILTER_FROM), until none is left
        (PREFILTER_CHARS a request at most)."""
        todo = [x for x in lost if x.memory_id not in self._known]
        if not todo:
            return
        pre = self._runs
        unread = [(x.memory_id, x.text) for x in todo if pre.bit(x.memory_id) is None]
        self._reading = bool(unread) and (self._reading or sum(len(t) for _, t in unread) > self._read_from)
        if self._reading:
            pre.read(unread, PREFILTER_CHARS)
        masks = pre.holders(terms)
        anyone = None if None in masks.values() else reduce(or_, masks.values(), 0)
        for x in todo:
            bit = pre.bit(x.memory_id)
            if bit is None:
                maybe: Iterable[str] = terms
            elif anyone is not None and not anyone & bit:
                continue  # no term's runs are all in runs of this text
            else:
                maybe = [t for t, m in masks.items() if m is None or m & bit]
            if any(t in x.text for t in maybe):
                yield x

    def add(self, lost: Iterable[Lost], memo: LRU | None = None) -> int:
        """Index the texts of ``lost`` not indexed yet. Returns how many were new."""
        new = {x.memory_id: x for x in lost if x.memory_id not in self._known}
        for mid, x in new.items():
            ts = terms_of(mid, x.text, memo)
            with self._lock:
                if mid in self._known:
                    continue
                self._known.add(mid)
                for t in ts:
                    self._owners.setdefault(t, []).append(mid)
                if len(x.text) > TERMS_CHARS:
                    self._long[mid] = ts
        return len(new)

    def entries(self, entries: list, make) -> list[Lost]:
        """``make(e)`` of each entry (None: not a lost text), remembered by the entry object itself:
        clearing hands the same entries on from request to request, so a request makes only the new ones.
        Only the latest request's entries are kept."""
        old, new, out = self._entries, {}, []
        for e in entries:
            got = old.get(id(e))
            if got is None or got[0] is not e:  # (the entry is held: its id is not reused meanwhile)
                got = (e, make(e))
            new[id(e)] = got
            if got[1] is not None:
                out.append(got[1])
        self._entries = new
        return out

    def has_long(self) -> bool:
        return bool(self._long)

    def long_ids(self) -> set[str]:
        """The ids of the indexed texts over TERMS_CHARS."""
        with self._lock:
            return set(self._long)

    def holding(self, term: str) -> tuple[str, ...]:
        """The ids of the indexed texts that hold ``term`` (as :func:`terms` reads them)."""
        with self._lock:
            return tuple(self._owners.get(term, ()))

    def long_terms(self, ids: dict | set) -> list[tuple[str, frozenset[str]]]:
        """Of ``ids``, the texts over TERMS_CHARS, with their indexed terms."""
        with self._lock:
            return [(mid, ts) for mid, ts in self._long.items() if mid in ids]


def _bounded(term: str, text: str) -> bool:
    """``term`` is in ``text`` as a word of its own (not inside a longer identifier)."""
    return re.search(r"(?<!\w)" + re.escape(term) + r"(?!\w)", text) is not None


def quoted_in(q: str, x: Lost, memo: LRU | None = None) -> bool:
    """``q`` is in the lost text: as it is, or line by line as the fidelity measure compares an Edit's
    ``old_string`` with a Read result (line numbers and quote marks removed, each line stripped; the
    first and last line may be part of a line)."""
    if q in x.text:
        return True
    if "\n" not in q.strip():
        return False
    lines = _lines(q)
    ix = _line_hashes(x.text) if memo is None else memo.get(x.memory_id, _line_hashes, x.text)
    inner = lines[1:-1] if len(lines) > 2 else []
    if not inner:  # two lines: each must be (part of) a line of the text
        return all(any(ln in t for t in x.text.split("\n")) for ln in lines)
    return all(hash(ln) in ix for ln in inner) and all(ln in x.text for ln in (lines[0], lines[-1]))


class Kept:
    """What the outgoing request still holds (built on first use: most requests never ask)."""

    def __init__(self, messages: Iterable[Any], memo: LRU | None = None) -> None:
        self._messages = messages
        self._memo = memo  # the runtime's (Memos.tokens): each text's tokens, remembered
        self._parts: list[str] | None = None
        self._text: str | None = None

    def parts(self) -> list[str]:
        if self._parts is None:
            parts = []
            for m in self._messages:
                for t in strings(m):
                    if t.startswith(SUMMARY_PREFIX) and WORKING_HEAD in t:
                        parts.append(t[t.index(WORKING_HEAD):])  # the files a summary keeps verbatim are held
                    elif not t.startswith(STUB_PREFIX) and not t.startswith(SUMMARY_PREFIX) and "<contextwarden-memory" not in t:
                        parts.append(t)
            self._parts = parts
        return self._parts

    def holds(self, s: str) -> bool:
        if self._text is None:
            self._text = "\n".join(self.parts())
        return s in self._text

    def holds_term(self, term: str) -> bool:
        """The term is a token of a kept text (as the fidelity measure reads a body: ``/chat`` is not
        held by ``/chat-history``, a path is held by a longer path ending with it)."""
        return any(term in _term_index(t, self._memo) for t in self.parts())


def _line_hashes(text: str) -> frozenset[int]:
    return frozenset(hash(ln) for ln in _lines(text))


def _term_index(text: str, memo: LRU | None = None) -> frozenset[str]:
    """The fidelity measure's tokens of one text, remembered by the text in ``memo`` (the history repeats)."""
    return frozenset(_tokens(text)) if memo is None else memo.get(text, lambda: frozenset(_tokens(text)))


EXCERPT_CONTEXT = 12  # lines kept before and after the lines a reference is on
EXCERPT_LINE_CHARS = 400  # of a longer line (minified JSON, a log line), this much on each side of the reference


def excerpt(text: str, refs: Iterable[str], context: int = EXCERPT_CONTEXT) -> str | None:
    """The lines of ``text`` the references are on, with ``context`` lines around them, the rest left
    out (``[… N lines left out …]``): what a reference needs when the whole text does not fit the
    budget. A multi-line reference (an Edit's ``old_string``) is found by its longest line, and the
    window spans as many lines as it has. None when no reference is found (as written, or as a line of
    the text after the fidelity measure's normalisation)."""
    refs = [r for r in refs if r.strip()]
    lines = text.split("\n")
    spans: list[tuple[int, int]] = []
    for ref in refs:
        ls = _lines(ref) if "\n" in ref.strip() else [ref.strip()]
        if not ls:
            continue
        key = max(ls, key=len)
        at = [i for i, ln in enumerate(lines) if key in ln]
        for i in at[:3]:  # the first few places (a term the text repeats does not take it all)
            spans.append((max(0, i - len(ls) - context), min(len(lines), i + len(ls) + context + 1)))
    if not spans:
        return None
    spans.sort()
    merged = [list(spans[0])]
    for a, b in spans[1:]:
        if a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    out, pos = [], 0
    for a, b in merged:
        if a > pos:
            out.append(f"[… {a - pos} lines left out …]")
        out.extend(_cut(ln, refs) for ln in lines[a:b])
        pos = b
    if pos < len(lines):
        out.append(f"[… {len(lines) - pos} lines left out …]")
    return "\n".join(out)


def _cut(line: str, refs: Iterable[str]) -> str:
    """A very long line around the first reference it holds (cut at spaces, so no token is split)."""
    if len(line) <= 2 * EXCERPT_LINE_CHARS:
        return line
    at = next((line.find(r) for r in refs if r and line.find(r) >= 0), 0)
    a, b = max(0, at - EXCERPT_LINE_CHARS), min(len(line), at + EXCERPT_LINE_CHARS)
    a = line.rfind(" ", 0, a) + 1 if a else 0
    nb = line.find(" ", b)
    b = len(line) if nb < 0 else nb
    return ("…" if a else "") + line[a:b] + ("…" if b < len(line) else "")

