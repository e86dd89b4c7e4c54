"""The conversation as the stages left it, aligned with the client's original messages.

Memory and tags must hold what the stages produced, not the client's original text: a user's privacy
stage (say, one that redacts e-mail addresses) placed before ``memory`` would otherwise be undone by the
next injection, and its redacted text would sit in Chroma and in the tags of the event log.

:func:`view` is a read-only sequence over the ORIGINAL message indices whose entries are the messages of
``ctx.request`` at the moment it is called (wire dicts, built only for the entries read). Index ``i`` of
the original maps to the request's message ``i`` when no stage changed the number of messages; after a
compaction (``ctx.notes["compaction"]``: messages ``lead..end`` became one summary) the messages from
``end`` on map to their new places. A message that was compacted away, or whose place cannot be told,
reads as ``None``: it is not stored from this request (it is not what went upstream).

:func:`capture` is called by the memory stage (the last stage, so after every privacy stage placed
before it) for the messages memory has not stored yet; ``cw_turn_complete`` stores those.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .retrieve import history_items

NOTE = "memory_source"  # ctx.notes key: (first index captured, the view of the messages as the stages left them)


def _current(ctx) -> list:
    return history_items(ctx.api, ctx.request)


class _View(Sequence):
    def __init__(self, original: list, current: list, mapping, history=None) -> None:
        self._original = original
        self._current = current
        self._map = mapping
        self._history = history

    def __len__(self) -> int:
        return len(self._original)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        j = self._map(i)
        if j is None:
            return None
        m = self._current[j]
        if m is self._original[i] or not hasattr(m, "wire"):
            return m
        history = self._history
        if history is not None:  # a message no stage replaced is the original: no need to dump it again
            if history.original_index(m) == i:
                return self._original[i]
            derived = history.derived.get(id(m))
            if derived is not None and derived.obj is m and derived.wire is not None:
                return derived.wire
        return m.wire()


def view(ctx) -> Sequence:
    """The original's message indices, read from ``ctx.request`` as the stages have left it so far."""
    original = history_items(ctx.api, ctx.original)
    current = _current(ctx)
    n, k = len(original), len(current)
    comp = ctx.notes.get("compaction") if isinstance(ctx.notes.get("compaction"), dict) else None
    if comp is not None and isinstance(comp.get("lead"), int) and isinstance(comp.get("end"), int):
        lead, end = comp["lead"], comp["end"]
        shift = (end - lead) - 1  # lead..end-1 became one summary message

        def mapping(i: int) -> int | None:
            if i < lead:
                return i
            if i < end:
                return None
            j = i - shift
            return j if 0 <= j < k else None
    elif n == k:
        def mapping(i: int) -> int | None:
            return i
    else:
        def mapping(i: int) -> int | None:  # a stage added or removed messages: where is not known
            return None
    return _View(original, current, mapping, getattr(ctx, "history", None))


def capture(ctx, start: int) -> None:
    """Remember (in ``ctx.notes``) the messages from ``start`` on as the stages produced them: the view
    as it is now (it holds a copy of the request's list of frozen messages), read when they are stored,
    so a long history costs nothing here."""
    ctx.notes[NOTE] = (max(0, start), view(ctx))


def to_store(ctx, msgs: list, start: int) -> list[Any] | None:
    """``msgs[start:]`` (the original's) as the stages produced them, ``None`` for a message that did
    not go upstream as such; ``None`` altogether when the memory stage did not capture them (it did not
    run for this request: the original is all there is)."""
    got = ctx.notes.get(NOTE)
    if not isinstance(got, tuple):
        return None
    first, v = got
    return [v[i] if first <= i < len(v) else None for i in range(start, len(msgs))]
