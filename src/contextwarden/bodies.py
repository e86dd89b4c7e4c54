"""Recent request bodies, original and rewritten, for the TUI's inspector and for replay.

Bodies hold conversation text but never credentials (those live in headers, which are redacted); what
is written to disk or handed out has the conversation's secrets redacted too (:mod:`contextwarden.scrub`).
Kept in memory up to a byte budget; written under ``cw_home/bodies`` only when the profile's
``log.record_bodies`` asks for it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import orjson


def _decoded(entry: dict[str, Any]) -> dict[str, Any]:
    """A copy of an entry with its bodies as JSON values (they are kept as bytes)."""
    out = {k: v for k, v in entry.items() if k != "_bytes"}
    for k in ("original", "rewritten"):
        v = out.get(k)
        if isinstance(v, (bytes, bytearray, memoryview)):
            try:
                out[k] = orjson.loads(v)
            except orjson.JSONDecodeError:
                out[k] = bytes(v).decode("utf-8", "replace")
    return out


class BodyRing:
    """The last requests' bodies, bounded by bytes and count.

    ``original`` and ``rewritten`` are best given as JSON bytes (``Runtime.remember`` does): bytes are a
    single object the garbage collector never walks, where a parsed 150K-token body is thousands of
    tracked dicts and lists. ``get`` and ``for_session`` return them decoded."""

    def __init__(self, max_bytes: int = 64_000_000, max_items: int = 500) -> None:
        self.max_bytes = max_bytes
        self.max_items = max_items
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, flow_id: str, entry: dict[str, Any], nbytes: int) -> None:
        entry["_bytes"] = nbytes
        with self._lock:
            old = self._items.pop(flow_id, None)
            if old:
                self._bytes -= old["_bytes"]
            self._items[flow_id] = entry
            self._bytes += nbytes
            while self._items and (self._bytes > self.max_bytes or len(self._items) > self.max_items):
                _, ev = self._items.popitem(last=False)
                self._bytes -= ev["_bytes"]

    def get(self, flow_id: str) -> dict[str, Any] | None:
        with self._lock:
            e = self._items.get(flow_id)
        return _decoded(e) if e else None

    def for_session(self, session: str) -> list[dict[str, Any]]:
        with self._lock:
            found = [e for e in self._items.values() if e.get("session") == session]
        return [_decoded(e) for e in found]


def record(home: Path, entry: dict[str, Any]) -> Path:
    """Write one request's bodies as JSON (the format ``contextwarden replay`` reads)."""
    d = Path(home) / "bodies" / str(entry.get("session") or "unknown")
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{time.time():.6f}-{entry['flow_id']}.json"
    from .scrub import scrub

    p.write_bytes(orjson.dumps(scrub(_decoded(entry))))  # no secret of the conversation reaches the disk
    return p
