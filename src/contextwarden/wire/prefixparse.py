"""Parsing a request body without parsing again the history the proxy parsed a moment ago.

A coding agent's request is its previous request plus a few messages. The JSON text of the old
messages is byte for byte what it was, so decoding it again (a third of a long request's time in the
proxy) only rebuilds what the previous request already has. ``RecentBodies`` keeps the last few
bodies' history as (the body's bytes up to the end of its last known message, where each message
ends, those messages, their ``orjson.dumps``); a new body that starts with the bytes of the first
``L`` of those messages is parsed as

    head (the keys before ``messages``) + the first L known messages + the rest (more messages, then the keys after)

where only the head and the rest are decoded (the history is ``messages``, or ``input`` for the
Responses API). ``L`` is the longest run of known messages the body
starts with: a client that moves its cache breakpoint to the newest message every turn (Claude Code
does) changes the previous last message, and everything before it is still known. The known messages
are the previous request's own dicts (``ctx.original`` is never mutated, so sharing them is safe) and
their bytes objects, whose hashes are already computed, so every per-message cache lookup after this
one is a pointer compare.

When is a message known? When the client writes it as ``orjson.dumps`` would (compact, UTF-8, keys
in order: what Claude Code's ``JSON.stringify`` writes) or, in a body written with spaces after the
separators, as Python's ``json.dumps`` would (:data:`SPACED`), checked with ``bytes.startswith`` at its
offset in the body (``remember``). A client that writes otherwise simply gets the full parse. The head must decode, closed right there, as an object whose last key is
``messages``: that proves it is a key of the top-level object, not a string's content or a nested key.
The rest is decoded under a key no client sends; a rest that holds a ``messages`` key of its own (a
duplicate, however it is spelled), a comma followed by no value, or anything that fails to decode
falls back to the full parse, so the result is always what ``orjson.loads(body)`` gives.
"""

from __future__ import annotations

import json
import os
import threading
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

MAX_CHUNKS = 32  # a remembered prefix is joined into one piece past this many
# the key the rest of a body is decoded under: random per process, so no body can hold it
_REST = "\x00contextwarden-rest-" + os.urandom(8).hex()
_REST_OPEN = orjson.dumps(_REST) + b":["
_SPACE = b" \t\r\n"
# how a body written with spaces after the separators writes a message: Python's json.dumps, with
# non-ASCII characters escaped (its default) or as they are
SPACED: tuple[Callable[[Any], bytes], ...] = (lambda m: json.dumps(m).encode(),
                                             lambda m: json.dumps(m, ensure_ascii=False).encode())


@dataclass(slots=True, eq=False)
class _Known:
    key: str  # "messages" or "input"
    # the body up to the end of its last known message, in pieces: each request of a conversation
    # adds the piece it added, so remembering it does not copy the whole history every time
    chunks: tuple[bytes, ...]
    head: bytes  # the body up to the history's key, closed into an object with an empty list
    start: int  # where the first message begins
    ends: list[int]  # where each known message ends
    msgs: list[Any]
    raws: list[bytes]
    written: list[bytes]  # each message as the body writes it (``raws`` itself for a compact body)
    sep: bytes  # between two messages: "," (compact) or ", " (spaced, :data:`SPACED`)
    # when every message of the body was known: the body from the ``]`` closing its history to its
    # end, and the keys there, decoded (a client sends the same system prompt and tools every time)
    tail: bytes | None = None
    rest: dict[str, Any] | None = None
    _head_obj: dict[str, Any] | None = None

    def head_obj(self) -> dict:
        """``head`` decoded, once (the caller copies it: its values are shared, as the messages are)."""
        h = self._head_obj
        if h is None:
            h = self._head_obj = orjson.loads(self.head)
        return h

    def matched(self, body: bytes) -> int:
        """How many of the known messages ``body`` starts with (with this head)."""
        if not body.startswith(self.written[0], self.start):
            return 0  # (another conversation's body: most of the known ones are, under many sessions)
        off = 0
        for c in self.chunks:
            if not body.startswith(c, off):
                break
            off += len(c)
        else:
            return len(self.raws)
        # the first piece that differs starts at `off`: the messages that end by then are the same;
        # the next ones are compared one by one
        if off < self.start:
            if not body.startswith(self.head_bytes()):
                return 0
            off = self.start
        i = bisect_right(self.ends, off)
        while i < len(self.raws):
            if i:
                at = self.ends[i - 1]
                if not body.startswith(self.sep, at):
                    break
                at += len(self.sep)
            else:
                at = self.start
            if not body.startswith(self.written[i], at):
                break
            i += 1
        return i

    def head_bytes(self) -> bytes:
        """The body up to where the first message begins."""
        return self.head[:-len(b"]}")]

    def prefix_to(self, end: int) -> tuple[bytes, ...]:
        """The pieces of the first ``end`` bytes."""
        out: list[bytes] = []
        off = 0
        for c in self.chunks:
            if off + len(c) <= end:
                out.append(c)
                off += len(c)
                if off == end:
                    break
            else:
                out.append(c[:end - off])
                break
        return tuple(out)


@dataclass(slots=True)
class Match:
    """The known history a body starts with: its first ``count`` messages."""

    known: _Known
    count: int
    rest: dict[str, Any] | None = None  # the body's keys after its history, as decoded with it

    @property
    def msgs(self) -> list[Any]:
        return self.known.msgs[:self.count]

    @property
    def raws(self) -> list[bytes]:
        return self.known.raws[:self.count]


class RecentBodies:
    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._known: list[_Known] = []  # most recent first
        self._lock = threading.Lock()
        self.hits = 0

    def parse(self, body: bytes, key: str = "messages") -> tuple[Any, Match | None]:
        """``orjson.loads(body)``, and the known history it starts with (None when it was parsed
        whole). ``key``: the list the history is in. Pass the match to ``remember``. Raises what
        ``orjson.loads(body)`` raises."""
        with self._lock:
            known = [k for k in self._known if k.key == key]
        best, best_n = None, 0
        for k in known:
            n = k.matched(body)
            if n > best_n:
                best, best_n = k, n
                if n == len(k.raws):
                    break
        if best is not None:
            try:
                data, rest = self._join(best, body, best_n)
            except (orjson.JSONDecodeError, ValueError, TypeError):
                data = None
            if data is not None:
                self.hits += 1
                return data, Match(best, best_n, rest)
        return orjson.loads(body), None

    @staticmethod
    def _join(k: _Known, body: bytes, count: int) -> tuple[dict | None, dict | None]:
        """The body decoded, the known messages not decoded again, and its keys after the history;
        (None, None) when it cannot be (the caller parses it whole)."""
        n = k.ends[count - 1]
        if k.tail is not None and len(body) - len(k.tail) >= n and body.endswith(k.tail):
            # the same keys after the history as the known body's: only the new messages are decoded
            new = _messages_between(body, n, len(body) - len(k.tail))
            if new is not None:
                head = dict(k.head_obj())
                head[k.key] = k.msgs[:count] + new
                head.update(k.rest or {})  # (a key in both: as below)
                return head, k.rest
        nxt = body[n:n + 1]
        if nxt == b",":
            rest = body[n + 1:]
            if rest.lstrip(_SPACE)[:1] in (b"]", b""):
                return None, None  # a comma and no value: not JSON (the full parse says so)
        elif nxt == b"]":
            rest = body[n:]
        else:
            return None, None
        head = dict(k.head_obj())
        tail = orjson.loads(b"{" + _REST_OPEN + rest)
        if not isinstance(head, dict) or not isinstance(tail, dict) or k.key in tail \
                or not isinstance(tail.get(_REST), list):
            return None, None  # (the history's key in the rest: a duplicate, whose value a full parse keeps)
        head[k.key] = k.msgs[:count] + tail.pop(_REST)
        head.update(tail)  # (a key in both: the first place, the last value, as a full parse)
        return head, tail

    def remember(self, body: bytes, data: Any, raws: list[bytes] | None, base: Match | None = None,
                 key: str = "messages") -> None:
        """Learn the body's history for the next request: how many of its messages are written as
        their ``orjson.dumps`` (or, spaced, as :data:`SPACED` writes them) at their place in the body.
        ``base``: the known history ``parse`` found it starts with (only the messages after it are checked)."""
        if not isinstance(data, dict) or not raws:
            return
        msgs = data.get(key)
        if not isinstance(msgs, list) or len(msgs) != len(raws):
            return
        k0, matched = None, 0
        if base is not None and base.known.key == key and base.count <= len(raws):
            k0, ok, matched = base.known, base.count, base.count
            head, start, ends, sep = k0.head, k0.start, k0.ends[:ok], k0.sep
            written = k0.written[:ok]
            pos = ends[-1] if ok else start
        else:
            opener, sep = orjson.dumps(key) + b":[", b","
            p = body.find(opener)
            if p < 0:
                opener, sep = orjson.dumps(key) + b": [", b", "
                p = body.find(opener)
            if p < 0:
                return
            head = body[:p] + opener + b"]}"
            try:
                h = orjson.loads(head)
            except orjson.JSONDecodeError:
                return  # the key is not one of the top-level object there
            if not isinstance(h, dict) or not h or list(h)[-1] != key or h[key] != []:
                return  # (nor there: it was the end of another key)
            start = pos = p + len(opener)
            ok, ends, written = 0, [], []
        for i in range(ok, len(raws)):
            at = pos
            if i:
                if not body.startswith(sep, at):
                    break
                at += len(sep)
            r = raws[i] if sep == b"," else next((b for w in SPACED if body.startswith(b := w(msgs[i]), at)), b"")
            if not r or not body.startswith(r, at):
                break
            pos = at + len(r)
            ends.append(pos)
            written.append(r)
            ok = i + 1
        if ok == 0 or k0 is not None and base is not None and ok == len(k0.raws) and matched == ok \
                and (k0.tail is not None or ok < len(raws) or base.rest is None):
            return  # nothing known, or nothing more than before (a body sent again: its tail learnt once)
        tail, rest = _tail_of(body, pos, base) if ok == len(raws) and k0 is not None and base is not None else (None, None)
        if k0 is not None:
            cut = ends[matched - 1]
            chunks = k0.prefix_to(cut) + ((body[cut:pos],) if pos > cut else ())
            if len(chunks) > MAX_CHUNKS:
                chunks = (b"".join(chunks),)
        else:
            chunks = (body[:pos],)
        kept = raws[:ok]
        k = _Known(key, chunks, head, start, ends, msgs[:ok], kept, kept if sep == b"," else written, sep, tail, rest,
                   k0._head_obj if k0 is not None and k0.head is head else None)
        with self._lock:
            # the longer history of the same conversation replaces the one it extends
            self._known = [k] + [x for x in self._known if x is not k0][: self.size - 1]

    def clear(self) -> None:
        with self._lock:
            self._known = []


def _messages_between(body: bytes, start: int, end: int) -> list | None:
    """The messages written in ``body[start:end]`` (after a known message, up to the ``]`` closing the
    history): ``,`` and one or more values, or nothing. None when it is not that (the caller parses
    another way). Raises what ``orjson.loads`` raises."""
    if start == end:
        return []
    if body[start] != 0x2C:  # ","
        return None
    new = orjson.loads(b"[" + body[start + 1:end] + b"]")
    return new if new else None  # (a comma and no value: not JSON)


def _tail_of(body: bytes, pos: int, base: Match) -> tuple[bytes | None, dict | None]:
    """The body's tail (from ``pos``, where its last message ends) and the keys in it as ``parse``
    decoded them (never decoded again here): the known body's own when the tail is the same bytes;
    (None, None) when the history is not closed right there."""
    k0 = base.known
    if k0.tail is not None and len(body) - len(k0.tail) == pos and body.endswith(k0.tail):
        return k0.tail, k0.rest
    if base.rest is None or body[pos:pos + 1] != b"]":
        return None, None
    return body[pos:], base.rest
