"""Recent request bodies, original and rewritten, for the TUI's inspector and for replay: in memory up to
a byte budget, under ``cw_home/bodies`` when ``log.record_bodies`` asks; what is written or handed out
is scrubbed of secrets (:mod:`contextwarden.util.scrub`).
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import Any

import orjson

from ..util.lru import LRU
from ..util.scrub import scrub

_BODIES = ("original", "rewritten")


def _decoded(entry: dict[str, Any]) -> dict[str, Any]:
    """A copy of an entry with its bodies as JSON values (they are kept as bytes, zlib once packed)."""
    out = dict(entry)
    packed = out.pop("packed", False)
    for k in _BODIES:
        v = out.get(k)
        if isinstance(v, (bytes, bytearray, memoryview)):
            if packed:
                v = zlib.decompress(v)
            try:
                out[k] = orjson.loads(v)
            except orjson.JSONDecodeError:
                out[k] = bytes(v).decode("utf-8", "replace")
    return out


class BodyRing:
    """The last requests' bodies, bounded by bytes and count, kept as JSON bytes (nothing for the garbage
    collector to walk); ``get`` and ``for_session`` return them decoded."""

    def __init__(self, max_bytes: int = 64_000_000, max_items: int = 500) -> None:
        self._lru = LRU(max_bytes, max_count=max_items)

    def put(self, flow_id: str, entry: dict[str, Any], nbytes: int) -> None:
        self._lru.put(flow_id, entry, nbytes)

    def get(self, flow_id: str) -> dict[str, Any] | None:
        e = self._lru.peek(flow_id)
        return _decoded(e) if e else None

    def for_session(self, session: str) -> list[dict[str, Any]]:
        return [_decoded(e) for _, e in self._lru.items() if e.get("session") == session]

    def pack(self) -> None:
        """Keep every body zlib-compressed (~5x smaller): what an idle proxy holds for the inspector
        (``collector.background``, with the conversations' forgetting). New bodies are kept as they come."""
        lru = LRU(self._lru.max_size, max_count=self._lru.max_count)
        for k, e in self._lru.items():
            if not e.get("packed"):
                e = {**e, "packed": True, **{f: zlib.compress(e[f], 1) for f in _BODIES if isinstance(e.get(f), bytes)}}
            lru.put(k, e, sum(len(e[f]) for f in _BODIES if isinstance(e.get(f), bytes)))
        self._lru = lru

    def __len__(self) -> int:
        return len(self._lru)


def record(home: Path, entry: dict[str, Any]) -> Path:
    """Write one request's bodies as JSON (the format ``contextwarden replay`` reads)."""
    d = Path(home) / "bodies" / str(entry.get("session") or "unknown")
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{time.time():.6f}-{entry['flow_id']}.json"
    p.write_bytes(orjson.dumps(scrub(_decoded(entry))))  # no secret of the conversation reaches the disk
    return p
