"""What the proxy remembers about each conversation (:class:`Conversation`, on ``runtime.conversations``),
and the view of it one request works with (:class:`History`, ``ctx.history``), so that a repeat
request costs what its new messages cost. Typed messages are frozen, so they are handed from request
to request as they are, and "did a stage change message ``i``" is ``request.messages[j] is
history.entries[i].obj``. The conversation is updated once, in ``prepare``; stages write only their
own slot (:meth:`History.carry_on`)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from operator import is_
from typing import Any

import orjson

from ..models.base import ApiKind, WireModel
from .validate import Checkpoints

_MISSING = object()


def session_key(ctx: Any) -> str:
    """The key a stage's stored decisions are kept under: one conversation, a tenant's session and, within
    it, one agent (Claude Code's subagents share the main agent's session id but not its conversation)."""
    return f"{ctx.tenant}|{ctx.session}|{ctx.agent}"


def same_prefix(a: list[Any], b: list[Any]) -> int:
    """How many leading elements ``a`` and ``b`` share by identity."""
    same = list(map(is_, a, b))
    return same.index(False) if False in same else len(same)


@dataclass(slots=True, eq=False)
class Typed:
    """A typed message and what is known about it: its JSON bytes, its wire dict once known, and the
    results stages remembered with it (``memo``). Never changes what it holds, only adds to ``memo``."""

    obj: WireModel
    raw: bytes | None = None
    wire: dict[str, Any] | None = None
    memo: dict[Any, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Latest:
    """A conversation's latest messages (the client's dicts) and their bytes; replaced whole, never
    changed (concurrent requests of a conversation read one or the other, never a mix)."""

    msgs: list[Any] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    inexact: frozenset[int] = frozenset()  # indexes whose bytes are those of an equal message, not its own


@dataclass(frozen=True, slots=True)
class Carried:
    """What a stage left about the first ``n`` messages of a request (``entries``: their entries)."""

    entries: list[Typed]
    n: int
    value: Any


@dataclass(frozen=True, slots=True)
class Memos:
    """What :meth:`History.memos` gave its latest call with a key: the messages asked about (``objs``)
    and their values."""

    objs: list[Any]
    values: list[Any]


class Conversation:
    """One conversation's memory: its latest messages (the client's dicts), their JSON bytes, their
    typed entries, the edited copies stages made of them, the validator's checkpoints, and a slot per
    stage for what it carries to the next request. Written by ``prepare`` (messages), :meth:`History.carry_on` (slots) and
    :meth:`History.memos` (memos) only."""

    __slots__ = ("key", "last", "entries", "raws", "index", "derived", "slots", "memos", "nbytes", "checkpoints", "requests")

    def __init__(self, key: tuple[Any, ...]) -> None:
        self.key = key
        self.requests = 0  # requests prepared: more than one, and the proxy has seen this conversation live
        self.last = Latest()
        self.entries: list[Typed] = []  # their typed entries
        self.raws: list[bytes] = []  # the bytes the entries were last matched with
        self.index: dict[int, int] = {}  # id of an entry's typed message -> its place (stale ids too: check the entry)
        self.derived: dict[bytes, tuple[Any, Typed]] = {}  # base message bytes -> (edit, the edited copy)
        self.slots: dict[Any, Carried] = {}  # stage key -> what it carries to the next request
        self.memos: dict[Any, Memos] = {}  # memo key -> History.memos' latest call with it
        self.nbytes = 0
        self.checkpoints = Checkpoints(size=8)  # the validator's state at the end of recently checked bodies

    def message_bytes(self, msgs: list[Any], known: list[bytes] | None = None) -> tuple[list[bytes], bool]:
        """``orjson.dumps`` of each message, and whether each is exactly that (not of an equal message).

        ``known``: the bytes of the first messages when they are a recent request's own dicts
        (prefixparse). Otherwise a message equal to the one at its place in the conversation's
        previous request gets that request's bytes object back instead of a new dump: comparing two
        parsed messages is cheaper than dumping one, and a bytes object keeps its hash, so every
        lookup after the first in the conversation is a pointer compare. Equal is enough for what
        depends on a message's content; the bytes are then not exact (an equal message may order its
        keys differently), which ``Pipeline.finish`` needs to know."""
        inexact: set[int] = set()
        self.requests += 1
        if known is not None:
            raws = list(known)
        else:
            last = self.last
            pm, pr, pin = last.msgs, last.raws, last.inexact
            raws = []
            for i in range(min(len(pm), len(msgs))):
                m = msgs[i]
                if m is pm[i]:
                    raws.append(pr[i])
                    if i in pin:
                        inexact.add(i)
                elif m == pm[i]:
                    raws.append(pr[i])
                    inexact.add(i)
                else:
                    raws.append(orjson.dumps(m))
        raws += [orjson.dumps(m) for m in msgs[len(raws):]]
        self.last = Latest(msgs, raws, frozenset(inexact))
        self.nbytes = sum(map(len, raws))
        return raws, not inexact

    def typed(self, msgs: list[Any], raws: list[bytes], parse: Callable[[Any], WireModel]) -> list[Typed]:
        """The typed entries of ``msgs`` (``raws`` their bytes): the conversation's own where the bytes
        are the same, else ``parse``d. Raises what ``parse`` raises (the conversation left as it was)."""
        old = self.entries
        k = min(len(old), len(raws))
        same = same_prefix(self.raws, raws) if len(self.raws) == len(old) else 0  # (the same bytes objects: C speed)
        out: list[Typed] = old[:same]
        index = self.index
        for i in range(same, len(raws)):
            m, r = msgs[i], raws[i]
            if i < k:
                e = old[i]
                if e.raw is r or e.raw == r:
                    out.append(e)
                    continue
            out.append(e := Typed(parse(m), r, m))
            index[id(e.obj)] = i  # (an entry keeps its place in later requests: the same one, or a new one)
        if len(index) > 2 * len(out) + 64:
            self.index = {id(e.obj): j for j, e in enumerate(out)}
        self.entries, self.raws = out, raws
        return out


class Conversations:
    """The runtime's conversations, least recently used out first (by count and by history bytes)."""

    def __init__(self, max_count: int = 64, max_bytes: int = 48_000_000) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._d: OrderedDict[tuple[Any, ...], Conversation] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> Conversation:
        with self._lock:
            c = self._d.get(key)
            if c is None:
                c = self._d[key] = Conversation(key)
            else:
                self._d.move_to_end(key)
            total = sum(x.nbytes for x in self._d.values()) if len(self._d) > 1 else 0
            while len(self._d) > 1 and (len(self._d) > self.max_count or total > self.max_bytes):
                _, old = self._d.popitem(last=False)
                total -= old.nbytes
            return c

    def clear(self) -> None:
        with self._lock:
            self._d.clear()

    def __len__(self) -> int:
        return len(self._d)


class History:
    """One request's view of its conversation: the typed entries it was prepared with (``entries``,
    aligned with the original messages; ``raws`` their bytes), the edited copies its stages made, and
    the conversation's slots. ``entries`` is never changed: a message of the request that is still
    ``entries[i].obj`` is the client's message ``i``, unchanged."""

    __slots__ = ("api", "conv", "raws", "entries", "derived", "_index", "_used", "wire_entries", "tokens_kept")

    def __init__(self, api: ApiKind, conv: Conversation | None, raws: list[bytes], entries: list[Typed]) -> None:
        self.api = api
        self.conv = conv
        self.raws = raws
        self.entries = entries
        self.derived: dict[int, Typed] = {}  # id(obj) -> entry of an edited copy made by derive
        self._index: dict[int, int] | None = conv.index if conv is not None else None  # (taken now: typed may replace it)
        self._used: dict[bytes, tuple[Any, Typed]] = {}  # the edited copies this request used, by base bytes
        self.wire_entries: list[Any] | None = None  # per message of the rewrite, its entry or None (pipeline.wire_of)
        self.tokens_kept: Any = None  # (messages, per-message counts) of the original (pipeline.count_tokens)

    def original_index(self, obj: Any) -> int | None:
        """Index of ``obj`` among the messages the request was prepared with, when it is one of them."""
        if self._index is None:
            self._index = {id(e.obj): j for j, e in enumerate(self.entries)}
        j = self._index.get(id(obj))
        return j if j is not None and j < len(self.entries) and self.entries[j].obj is obj else None

    def entry_of(self, obj: Any, at: int | None = None) -> Typed | None:
        """The entry of ``obj``: one of the prepared messages (``at``: where to look first) or an
        edited copy :meth:`derive` made; None for a message a stage built otherwise."""
        ents = self.entries
        if at is not None and at < len(ents) and ents[at].obj is obj:
            return ents[at]
        j = self.original_index(obj)
        if j is not None:
            return ents[j]
        e = self.derived.get(id(obj))
        return e if e is not None and e.obj is obj else None

    def memo(self, obj: Any, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()``, remembered with the message ``obj`` (a result that depends on the message's
        content and ``key`` alone). A message with no entry is computed every time."""
        return self._memos([obj], key, lambda _: compute(), 0)[0]

    def memos(self, objs: list[Any], key: Any, compute: Callable[[Any], Any], start: int = 0) -> list[Any]:
        """``[self.memo(o, key, lambda: compute(o)) for o in objs]`` (``objs`` usually the prepared
        messages from ``start`` on); those of the conversation's previous call with ``key`` where it had
        the very same objects (by identity, at C speed): a repeat request looks at its new messages only."""
        conv = self.conv
        got = conv.memos.get(key) if conv is not None else None
        k = same_prefix(objs, got.objs) if got is not None else 0
        out = got.values[:k] + self._memos(objs[k:], key, compute, start + k) if got is not None and k else \
            self._memos(objs, key, compute, start)
        if conv is not None:  # (copies: the caller's request may change its list)
            conv.memos[key] = Memos(objs[:], out[:])
        return out

    def _memos(self, objs: list[Any], key: Any, compute: Callable[[Any], Any], start: int) -> list[Any]:
        out, ents = [], self.entries
        for p, o in enumerate(objs, start):
            e = ents[p] if p < len(ents) and ents[p].obj is o else self.entry_of(o, p)  # (at its own place: no call)
            if e is None:
                out.append(compute(o))
                continue
            v = e.memo.get(key, _MISSING)
            if v is _MISSING:
                v = e.memo[key] = compute(o)
            out.append(v)
        return out

    def derive_all(self, items: list[tuple[WireModel, Any, Callable[[], WireModel]]]) -> list[WireModel]:
        """For each ``(base, edit, build)``: a new typed message equal to ``build()``, ``base`` (a prepared
        message) changed by ``edit`` (a value that describes the change completely and compares with
        ``==``: the same edit always gives the same message). The conversation keeps the latest edited
        copy of each message with its wire form and bytes once known, so the next request that makes the
        same edit gets the very same object back, not a copy to build, dump and validate again."""
        conv = self.conv
        out = []
        used, derived, raws = self._used, self.derived, self.raws
        for base, edit, build in items:
            j = self.original_index(base) if conv is not None else None
            if j is None or conv is None:
                out.append(build())
                continue
            raw = raws[j]
            got = used.get(raw) or conv.derived.get(raw)
            e = got[1] if got is not None and got[0] == edit else Typed(build())
            used[raw] = (edit, e)
            derived[id(e.obj)] = e
            out.append(e.obj)
        if conv is not None and self._used:
            conv.derived = dict(self._used)  # (only what the latest request used is kept)
        return out

    def edit(self, req: Any, edits: dict[int, Any], edited: Callable[[Any, Any], Any]) -> None:
        """``req.messages[i]`` replaced by ``edited(m, edits[i])`` for each ``i`` of ``edits`` (a dialect's
        ``edited``: clearing's and compression's stubs, the breakpoints stage's markers), through
        :meth:`derive_all`: the same edit of the same message is the very same copy on every request, its wire
        form known, so re-applying it costs no copy, dump and validation."""
        if not edits:
            return  # (a Responses request has no ``messages``: its items are edited in place)
        msgs = req.messages
        todo = list(edits)
        new = self.derive_all([(msgs[i], edits[i], partial(edited, msgs[i], edits[i])) for i in todo])
        for i, m in zip(todo, new):
            msgs[i] = m

    def carried(self, key: Any) -> tuple[int, Any] | None:
        """``(n, value)`` the conversation's previous request left under ``key`` with :meth:`carry_on`
        about its first ``n`` messages, when they are this request's first ``n``. The value is shared:
        read it, never change it."""
        got = self.conv.slots.get(key) if self.conv is not None else None
        # (Typed compares by identity: C speed)
        if got is None or got.n > len(self.entries) or self.entries[:got.n] != got.entries:
            return None
        return got.n, got.value

    def carry_on(self, key: Any, n: int, value: Any) -> None:
        """Leave ``value``, which depends on this request's first ``n`` messages only, to the
        conversation's next request (:meth:`carried`)."""
        if self.conv is not None:
            self.conv.slots[key] = Carried(self.entries[:n], n, value)
