"""Typed messages kept between requests, so a history seen before is not validated into pydantic again.

A coding agent re-sends its whole history with every request. Validating 200 messages into the typed
model costs as much as the rest of a repeat request, so the pipeline keeps each message's typed object
under the message's exact JSON bytes, and the next request of the conversation takes it back out
instead of parsing it again.

Lent, never shared. Stages edit the typed request in place, so ``TypedPool.lease`` takes the objects
out of the pool (a concurrent request with the same message parses its own) and ``give_back`` puts
back only those no stage changed. A change is seen through :class:`~contextwarden.models.base.WireModel`'s
attribute writes (``touched``) on the message or any typed object inside it, and through its typed
lists (:class:`~contextwarden.models.base.TrackedList`: ``content`` blocks, ``tool_calls``), so an
``append`` or ``pop`` counts too; ``touches`` counts every such write, so while it has not moved a
lease knows without looking that nothing it lent was changed (``Lease.quiet``). Values of ``Any``
fields (a tool input, a tool_result's list content, unknown extras) are the client's own dicts and
lists, shared with ``ctx.original``: stages replace them and never mutate them (see
``hookspecs.cw_request``), which is also what keeps the original body intact.

Runs. A request that went through untouched gives its messages back as one run, which the
conversation's next request (starting with the very same bytes objects: prefixparse and
``Runtime.message_bytes`` hand them on) takes back with one list compare, up to the first message
that differs (where the client moved its cache breakpoint). A message untouched in a request is also
*pristine* there: its wire form is the client's own dict, so ``pipeline.wire_of`` does not dump it.

Derived messages. A stage that rewrites a message the same way on every request (the clearing stage's
stubs) asks for a derived message instead of editing the lent one: ``Lease.derive`` returns a new typed
message made from the original by an edit the stage names with a key, built once and then lent like
the originals, with its wire form and JSON bytes remembered.

Memos and carries. ``Lease.memo`` remembers a stage's result that depends on one message alone with
that message; ``Lease.carry_on`` leaves what a stage worked out about the first ``n`` messages to the
next request that takes the run (``Lease.carried``): clearing's slots and re-applied stubs, the wire form.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from operator import is_
from typing import Any, Callable

from .models.base import ApiKind, TrackedList, WireModel, touched, touched_list, touches


_MISSING = object()


def same_prefix(a: list, b: list) -> int:
    """How many leading elements ``a`` and ``b`` share by identity."""
    same = list(map(is_, a, b))
    return same.index(False) if False in same else len(same)


class Entry:
    """A typed message, the typed objects inside it and its typed lists as they were parsed."""

    __slots__ = ("obj", "parts", "lists", "wire", "raw", "memo", "_verified")

    def __init__(self, obj: WireModel) -> None:
        self.obj = obj
        self.memo: dict[Any, Any] | None = None  # stages' results that depend on the message alone (Lease.memo)
        self._verified = -1  # the touch count at which no typed object inside had been written
        self.wire: dict[str, Any] | None = None  # a derived message's wire form and its JSON bytes, once known
        self.raw: bytes | None = None
        parts: list[WireModel] = []
        lists: list[tuple[str, list, tuple]] = []
        for name in ("content", "tool_calls"):
            v = obj.__dict__.get(name)
            if isinstance(v, list):
                lists.append((name, v, tuple(v)))
                for x in v:
                    if isinstance(x, WireModel):
                        parts.append(x)
                        f = x.__dict__.get("function")
                        if isinstance(f, WireModel):
                            parts.append(f)
        self.parts = tuple(parts)
        self.lists = tuple(lists)

    def pristine(self) -> bool:
        """Nothing in the message was written since it was parsed."""
        if touched(self.obj):
            return False
        count = touches[0]
        if self._verified != count:  # some typed object somewhere was written since the last look
            for p in self.parts:
                if touched(p):
                    return False
            self._verified = count
        d = self.obj.__dict__
        for name, lst, snap in self.lists:
            if d.get(name) is not lst:
                return False
            if type(lst) is TrackedList:
                if touched_list(lst):
                    return False
            elif len(lst) != len(snap) or tuple(lst) != snap:  # a plain list: compared with how it was
                return False
        return True


class Lease:
    """The typed messages of one request: which came from which original message, and the derived ones."""

    __slots__ = ("api", "raws", "entries", "pool", "derived", "_index", "_t0", "prior", "carry", "kept")

    def __init__(self, api: ApiKind, raws: list[bytes], entries: list[Entry], pool: "TypedPool | None" = None,
                 prior: dict | None = None) -> None:
        self.prior = prior or {}  # the carry of the run this lease took (see carried)
        self.carry: dict[Any, tuple[int, Any]] = {}
        self.kept: set[int] = set()  # ids of derived entries that travel in a carry, not back to the pool
        # every entry is as parsed now (the pool holds only untouched ones, and lends each to one
        # request); while the touch count stays at _t0, nothing typed was written anywhere since
        self._t0 = touches[0]
        self.api = api
        self.raws = raws
        self.entries = entries
        self.pool = pool
        self.derived: dict[int, tuple[tuple, Entry]] = {}  # id(obj) -> (pool key, entry)
        self._index: dict[int, int] | None = None

    def index(self) -> dict[int, int]:
        """id(typed message) -> its index in the original messages."""
        if self._index is None:
            self._index = {id(e.obj): j for j, e in enumerate(self.entries)}
        return self._index

    def original_index(self, obj: Any) -> int | None:
        """Index in the original messages of the typed message ``obj`` when it is that message, untouched."""
        j = self.index().get(id(obj))
        if j is None or self.entries[j].obj is not obj:
            return None
        if touches[0] != self._t0 and not self.entries[j].pristine():
            return None
        return j

    def quiet(self) -> bool:
        """No typed message was written anywhere since this lease was made."""
        return touches[0] == self._t0

    def memo(self, obj: Any, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()``, remembered with the message ``obj`` while it stays as the client sent it:
        for a stage's result that depends on the message's content (and ``key``) alone. A message a
        stage changed is computed every time."""
        j = self.original_index(obj)
        if j is None:
            e = self.derived_entry(obj)
        else:
            e = self.entries[j]
        if e is None:
            return compute()
        memo = e.memo
        if memo is None:
            memo = e.memo = {}
        try:
            return memo[key]
        except KeyError:
            v = memo[key] = compute()
            return v

    def carried(self, key: Any) -> tuple[int, Any] | None:
        """``(n, value)`` that the conversation's previous request left under ``key`` with :meth:`carry_on`
        about its first ``n`` messages, which are this request's first ``n`` (the same typed objects,
        untouched). None when there is none. The value is shared: read it, never change it."""
        got = self.prior.get(key)
        if got is None or not (self.quiet() or all(e.pristine() for e in self.entries[:got[0]])):
            return None
        return got

    def carry_on(self, key: Any, n: int, value: Any) -> None:
        """Leave ``value``, which depends on this request's first ``n`` messages only, to the
        conversation's next request (it gets it back from :meth:`carried` when it starts with them)."""
        self.carry[key] = (n, value)

    def memos(self, objs: list, key: Any, compute: Callable[[Any], Any], start: int = 0) -> list:
        """``[self.memo(o, key, lambda: compute(o)) for o in objs]``, faster for the usual case: the
        request's messages (from ``start``) as lent, in order, nothing written since."""
        ents = self.entries[start:] if start else self.entries
        if self.quiet() and len(objs) == len(ents) and all(o is e.obj for o, e in zip(objs, ents)):
            out = []
            for e in ents:
                memo = e.memo
                if memo is None:
                    memo = e.memo = {}
                v = memo.get(key, _MISSING)
                if v is _MISSING:
                    v = memo[key] = compute(e.obj)
                out.append(v)
            return out
        return [self.memo(o, key, lambda o=o: compute(o)) for o in objs]

    def derive_all(self, items: list[tuple[WireModel, Any, Callable[[], WireModel]]]) -> list[WireModel]:
        """:meth:`derive` of each ``(base, key, build)``, with one trip to the pool."""
        keyed = []
        for base, key, build in items:
            j = self.original_index(base)
            keyed.append((("d:" + self.api.value, self.raws[j], key) if j is not None and self.pool is not None else None, build))
        got = self.pool.take_all([k for k, _ in keyed if k is not None]) if self.pool is not None else {}
        out = []
        for pkey, build in keyed:
            if pkey is None:
                out.append(build())
                continue
            e = got.get(pkey)
            if e is None:
                e = Entry(build())
            self.derived[id(e.obj)] = (pkey, e)
            out.append(e.obj)
        return out

    def derive(self, base: WireModel, key: bytes, build: Callable[[], WireModel]) -> WireModel:
        """A new typed message equal to ``build()``: ``base`` (a message of this request) changed by an
        edit that ``key`` names completely (the same key must always give the same message). Lent from
        the pool when this edit of this message was built before; ``base`` itself is left untouched.
        ``build`` must not share typed objects with ``base`` (``model_copy`` every block it keeps)."""
        return self.derive_all([(base, key, build)])[0]

    def adopt(self, pkey: tuple, e: Entry) -> None:
        """Take ``e`` (a derived message a stage carried on from the previous request) as this
        request's derived message under ``pkey``."""
        self.derived[id(e.obj)] = (pkey, e)

    def keep_out(self, e: Entry) -> None:
        """``e`` goes on in a stage's carry: not back to the pool, where another request could take it."""
        self.kept.add(id(e))

    def derived_entry(self, obj: Any) -> Entry | None:
        """The derived message ``obj`` made by :meth:`derive`, if nothing touched it since."""
        got = self.derived.get(id(obj))
        if got is None or got[1].obj is not obj or not self.pristine(got[1]):
            return None
        return got[1]

    def pristine(self, e: Entry) -> bool:
        return touches[0] == self._t0 or e.pristine()


class _Run:
    """A conversation's typed messages as one piece: what a request that went through untouched
    leaves for the next request of the conversation, which starts with the very same message bytes
    objects (prefixparse and Runtime.message_bytes hand them on), so taking them back is a list
    compare, not a pool lookup per message."""

    __slots__ = ("raws", "entries", "nbytes", "carry")

    def __init__(self, raws: list[bytes], entries: list[Entry], carry: dict | None = None) -> None:
        self.raws = raws
        self.entries = entries
        self.nbytes = sum(map(len, raws))
        self.carry = carry or {}  # key -> (n, value): what a stage worked out about the first n messages


def _size(k: tuple, v: Any) -> int:
    return v.nbytes if type(v) is _Run else len(k[1])


class TypedPool:
    """Typed messages by (api, exact JSON bytes), least recently used out first, bounded by bytes."""

    def __init__(self, max_bytes: int = 48_000_000) -> None:
        self.max_bytes = max_bytes
        # (api, message bytes) -> an original message; ("d:" + api, message bytes, edit key) -> a derived
        # one; ("run", api, id of its first message's bytes) -> a _Run
        self._d: OrderedDict[tuple, Any] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _take_run(self, api: ApiKind, raws: list[bytes]) -> tuple[_Run, int] | None:
        """The run this request starts with, and for how many messages (the same bytes objects: a
        client that moves its cache breakpoint changes its previous last message, not the ones before)."""
        if not raws:
            return None
        k = ("run", api.value, id(raws[0]))
        run = self._d.get(k)
        if run is None or run.raws[0] is not raws[0]:
            return None
        n = same_prefix(run.raws, raws)
        del self._d[k]
        self._bytes -= run.nbytes
        return run, n

    def lease(self, api: ApiKind, msgs: list, raws: list[bytes], parse: Callable[[Any], WireModel]) -> Lease:
        """Typed objects of ``msgs`` (``raws`` their JSON bytes): from the pool, else ``parse``d.
        Raises what ``parse`` raises (the pool is left as it was for the rest)."""
        kind = api.value
        got: list[Entry | None] = []
        with self._lock:
            taken = self._take_run(api, raws)
            run, start = taken if taken is not None else (None, 0)
            d = self._d
            for r in raws[start:]:
                e = d.pop((kind, r), None)
                if e is not None:
                    self._bytes -= len(r)
                got.append(e)
        entries: list[Entry] = run.entries[:start] if run is not None else []
        hits = start
        for m, e in zip(msgs[start:], got):
            if e is None:
                e = Entry(parse(m))
            else:
                hits += 1
            entries.append(e)
        self.hits += hits
        self.misses += len(raws) - hits
        prior = {k: v for k, v in run.carry.items() if v[0] <= start} if run is not None else None
        return Lease(api, raws, entries, self, prior)

    def take_all(self, keys: list[tuple]) -> dict[tuple, Entry]:
        out = {}
        with self._lock:
            d = self._d
            for k in keys:
                e = d.pop(k, None)
                if e is not None:
                    self._bytes -= len(k[1])
                    out[k] = e
        return out

    def give_back(self, lease: Lease) -> int:
        """Return the lease's untouched messages; the others are dropped. Returns how many went back.

        The untouched ones from the first message on go back as one run (for the conversation's next
        request), the others one by one."""
        kind = lease.api.value
        limit = self.max_bytes // 16
        raws, ents = lease.raws, lease.entries
        if lease.quiet():
            first = len(ents)  # every one is untouched
            loose: list[tuple[tuple, Entry]] = []
            derived = [(k, e) for k, e in lease.derived.values() if e.wire is not None and len(k[1]) <= limit
                       and id(e) not in lease.kept]
        else:
            ok = Entry.pristine
            flags = [ok(e) for e in ents]
            first = flags.index(False) if False in flags else len(ents)
            loose = [((kind, r), e) for r, e, f in zip(raws[first:], ents[first:], flags[first:]) if f and len(r) <= limit]
            # derived messages go back once their wire form is known (they went through Pipeline.finish)
            derived = [(k, e) for k, e in lease.derived.values() if e.wire is not None and len(k[1]) <= limit and ok(e)
                       and id(e) not in lease.kept]
        run = _Run(raws[:first], ents[:first], {k: v for k, v in lease.carry.items() if v[0] <= first}) if first else None
        with self._lock:
            d = self._d
            added = 0
            if run is not None and run.nbytes <= self.max_bytes // 2:
                k = ("run", kind, id(run.raws[0]))
                if d.setdefault(k, run) is run:
                    added += run.nbytes
            for k, e in loose + derived:
                if d.setdefault(k, e) is e:  # (a concurrent request may have put its own back first)
                    added += len(k[1])
            self._bytes += added
            while self._bytes > self.max_bytes and d:
                k, v = d.popitem(last=False)
                self._bytes -= _size(k, v)
        return first + len(loose) + len(derived)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._d)
