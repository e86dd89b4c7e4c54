"""Parsing a request body without parsing again the history the proxy parsed a moment ago.

A coding agent's request is its previous request plus a few messages. The JSON text of the old
messages is byte for byte what it was, so decoding it again (a third of a long request's time in the
proxy) only rebuilds what the previous request already has. ``RecentBodies`` keeps the last few
bodies' history as (the body's bytes up to the end of its last known message, those messages, their
``orjson.dumps``); a new body that starts with one of those prefixes is parsed as

    head (the keys before ``messages``) + the known messages + the rest (new messages, then the keys after)

where only the head and the rest are decoded. The known messages are the previous request's own dicts
(``ctx.original`` is never mutated, so sharing them is safe) and their bytes objects, whose hashes are
already computed, so every per-message cache lookup after this one is a pointer compare.

When is a prefix known? When the client writes each message exactly as ``orjson.dumps`` would
(compact, UTF-8, keys in order: what Claude Code's ``JSON.stringify`` writes), checked message by
message with ``bytes.startswith`` at the offsets in the body (``remember``). A client that writes
otherwise (spaces after separators) simply gets the full parse. The head must decode as an object
when closed right there, which proves ``"messages"`` is a key of the top-level object and not a
string's content or a nested key. A rest holding another ``"messages":`` key, or anything that fails
to decode, falls back to the full parse, so the result is always what ``orjson.loads(body)`` gives.
"""

from __future__ import annotations

import threading
from typing import Any

import orjson

_KEY = b'"messages":['
MAX_CHUNKS = 32  # a remembered prefix is joined into one piece past this many


class _Known:
    __slots__ = ("chunks", "size", "head", "msgs", "raws")

    def __init__(self, chunks: tuple[bytes, ...], head: bytes, msgs: list, raws: list[bytes]) -> None:
        # the body up to the end of its last known message, in pieces: each request of a conversation
        # adds the piece it added, so remembering it does not copy the whole history every time
        self.chunks = chunks
        self.size = sum(len(c) for c in chunks)
        self.head = head  # the body up to "messages", closed into an object with an empty list
        self.msgs = msgs
        self.raws = raws

    def starts(self, body: bytes) -> bool:
        off = 0
        for c in self.chunks:
            if not body.startswith(c, off):
                return False
            off += len(c)
        return True


class RecentBodies:
    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._known: list[_Known] = []  # most recent first
        self._lock = threading.Lock()
        self.hits = 0

    def parse(self, body: bytes) -> tuple[Any, "_Known | None"]:
        """``orjson.loads(body)``, and the known history it starts with (None when it was parsed
        whole; pass it to ``remember``). Raises what ``orjson.loads(body)`` raises."""
        with self._lock:
            known = list(self._known)
        for k in known:
            n = k.size
            if len(body) <= n or not k.starts(body):
                continue
            try:
                data = self._join(k, body, n)
            except (orjson.JSONDecodeError, ValueError, TypeError):
                data = None
            if data is not None:
                self.hits += 1
                return data, k
        return orjson.loads(body), None

    @staticmethod
    def _join(k: _Known, body: bytes, n: int) -> dict | None:
        nxt = body[n:n + 1]
        if nxt == b",":
            rest = body[n + 1:]
        elif nxt == b"]":
            rest = body[n:]
        else:
            return None
        if rest.find(b'"messages":') >= 0:  # a key of that name further on (maybe a duplicate): not ours to merge
            return None
        head = orjson.loads(k.head)
        tail = orjson.loads(b'{"messages":[' + rest)
        if not isinstance(head, dict) or not isinstance(tail, dict) or not isinstance(tail.get("messages"), list):
            return None
        head["messages"] = k.msgs + tail.pop("messages")
        for key, v in tail.items():  # (a key in both: the first place, the last value, as a full parse)
            head[key] = v
        return head

    def remember(self, body: bytes, data: Any, raws: list[bytes] | None, base: "_Known | None" = None) -> None:
        """Learn the body's history for the next request: how many of its messages are written as
        their ``orjson.dumps`` at their place in the body. ``base``: the known history ``parse`` found
        it starts with (only the messages after it are checked)."""
        if not isinstance(data, dict) or not raws:
            return
        msgs = data.get("messages")
        if not isinstance(msgs, list) or len(msgs) != len(raws):
            return
        if base is not None and len(base.raws) <= len(raws):
            head, pos, ok = base.head, base.size, len(base.raws)
        else:
            p = body.find(_KEY)
            if p < 0:
                return
            head = body[:p] + b'"messages":[]}'
            try:
                if not isinstance(orjson.loads(head), dict):
                    return
            except orjson.JSONDecodeError:
                return  # "messages" is not a key of the top-level object there
            pos, ok = p + len(_KEY), 0
        n = len(body)
        for i in range(ok, len(raws)):
            if i:
                if pos >= n or body[pos] != 0x2C:  # ","
                    break
                pos += 1
            r = raws[i]
            if not body.startswith(r, pos):
                break
            pos += len(r)
            ok = i + 1
        if ok == 0 or (base is not None and ok == len(base.raws)):
            return  # nothing known, or nothing more than before
        if base is not None:
            chunks = base.chunks + (body[base.size:pos],)
            if len(chunks) > MAX_CHUNKS:
                chunks = (b"".join(chunks),)
        else:
            chunks = (body[:pos],)
        k = _Known(chunks, head, msgs[:ok], raws[:ok])
        with self._lock:
            # the longer history of the same conversation replaces the one it extends
            self._known = [k] + [x for x in self._known if x is not base][: self.size - 1]

    def clear(self) -> None:
        with self._lock:
            self._known = []
