"""One bounded memo for every cache of the proxy: what was not used lately goes first.

:class:`LRU` remembers a pure function's results, bounded by a size (a count, or ``size(key)`` per key)
and optionally by a count too, keyed by the exact value (hash, then equality: never another key's).
Two generations of plain dictionaries: a hit is one ``dict.get`` with no lock (a race at most forgets
an entry); new entries go to the young one, which becomes the old one at half the bound (the old one
dropped); what is used again from the old one moves to the young one. Memos of the request path belong
to a runtime (``Runtime.memo(name, factory)``), never to a module.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Hashable
from typing import Any


class LRU:
    """``get(key, compute, *args)``: the remembered value, else ``compute(*args)`` remembered (without
    ``compute``: None, nothing remembered). Bounded by ``max_size``, counting ``size(key)`` per key (1 by
    default, or the ``n`` given to :meth:`put`), and by ``max_count`` entries when set. Keys whose size is
    below ``min_size`` (cheaper to compute again than to keep) or above ``max_item`` are not kept. Values
    are never None. A key put again has its value replaced (while young, its size counted once: the
    first put's), so a record kept up to date by :meth:`put` is one entry."""

    def __init__(self, max_size: int, size: Callable[[Any], int] | None = None, min_size: int = 0,
                 max_item: int | None = None, max_count: int | None = None) -> None:
        self.max_size = max_size
        self.size = size
        self.min_size = min_size
        self.max_item = max_item if max_item is not None else max(1, max_size // 2)
        self.max_count = max_count
        self._young: dict[Hashable, Any] = {}
        self._old: dict[Hashable, Any] = {}
        self._total = self._old_total = 0  # each generation's size
        self._lock = threading.Lock()

    def peek(self, key: Hashable) -> Any:
        """The value held for ``key`` (None when absent), without counting it as a use."""
        v = self._young.get(key)
        return self._old.get(key) if v is None else v

    @property
    def young(self) -> dict[Hashable, Any]:
        """The young generation, for a hot loop's lookups without a call (a hit there is right; on a
        miss ask :meth:`get`). Read only."""
        return self._young

    def get(self, key: Hashable, compute: Callable[..., Any] | None = None, *args: Any) -> Any:
        v = self._young.get(key)
        if v is None:
            v = self._old.get(key)
            if v is None and compute is not None:
                v = compute(*args)
            self.put(key, v)
        return v

    def put(self, key: Hashable, v: Any, n: int | None = None) -> None:
        if n is None:
            n = self.size(key) if self.size is not None else 1
        if n < self.min_size or n > self.max_item or v is None:
            return
        with self._lock:
            if key in self._young:
                self._young[key] = v
                return
            if self._young and (self._total + n > self.max_size // 2
                                or (self.max_count is not None and len(self._young) >= max(1, self.max_count // 2))):
                self._old, self._young, self._old_total, self._total = self._young, {}, self._total, 0
            self._young[key] = v
            self._total += n
            self._old.pop(key, None)  # (its older value let go)

    def pop(self, key: Hashable) -> Any:
        """Forget ``key``: the value held for it (None when absent). Its size counts until its generation goes."""
        with self._lock:
            v = self._young.pop(key, None)
            o = self._old.pop(key, None)
        return o if v is None else v

    def items(self) -> list[tuple[Hashable, Any]]:
        """The keys and values held, each key once, the older generation's first, each in the order stored."""
        with self._lock:
            young = self._young
            return [(k, v) for k, v in self._old.items() if k not in young] + list(young.items())

    def clear(self) -> None:
        with self._lock:
            self._young, self._old, self._total, self._old_total = {}, {}, 0, 0

    @property
    def held(self) -> int:
        """The size of what is held (both generations)."""
        return self._total + self._old_total

    def __len__(self) -> int:
        return len(self._young) + len(self._old)


class BytesMemo(LRU):
    """An :class:`LRU` keyed by exact bytes, bounded by the bytes of its keys (an eighth of the bound
    at most per key)."""

    def __init__(self, max_bytes: int = 32_000_000, min_key: int = 0) -> None:
        super().__init__(max_bytes, size=len, min_size=min_key, max_item=max_bytes // 8)


_NONE = object()  # a remembered None (an LRU holds no None)
# the memos of pure functions shared by every runtime (made at import, never replaced): what an idle
# proxy forgets with its conversations (forget_shared)
_SHARED: list[LRU] = []


def shared(memo: LRU) -> LRU:
    """``memo``, a module's memo of a pure function (the same for every runtime), forgotten with the rest
    when the proxy idles (:func:`forget_shared`)."""
    _SHARED.append(memo)
    return memo


def forget_shared() -> None:
    """Empty every shared memo (a pure function's: the next call computes the same value again)."""
    for memo in _SHARED:
        memo.clear()


def memoized(max_size: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A pure function of its positional arguments, remembered in an :class:`LRU` of ``max_size``
    calls (``fn.memo``, a :func:`shared` memo): for memos of a text's or a name's result, the same for
    every runtime."""
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        memo = shared(LRU(max_size))

        def compute(*args: Any) -> Any:
            v = fn(*args)
            return _NONE if v is None else v

        @functools.wraps(fn)
        def call(*args: Any) -> Any:
            v = memo.young.get(args)  # (a hit without a further call)
            if v is None:
                v = memo.get(args, compute, *args)
            return None if v is _NONE else v

        call.memo = memo  # type: ignore[attr-defined]
        return call
    return wrap
