"""One TUI for every replica of a gateway: events read from the Redis stream the replicas publish to
(``addons/eventstream.py``), each saying which replica served it.

Sequence numbers are per process, so two replicas' events share them: this source numbers events by
their stream position instead (unique and in order), which the store's de-duplication needs.
Read-only: settings and bypass are changed on one replica's event server (``contextwarden tui``
without ``--redis``) and reach the others through the shared state.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import redis.asyncio as aioredis

from .client import Post, Source
from .messages import ConnectionChanged, EventsReceived, SnapshotReceived

SNAPSHOT_EVENTS = 2000


def stream_seq(stream_id: bytes | str) -> int:
    ms, _, n = (stream_id.decode() if isinstance(stream_id, bytes) else stream_id).partition("-")
    return int(ms) * 10_000 + int(n or 0)


def decode_entries(entries) -> list[dict[str, Any]]:
    out = []
    for sid, fields in entries:
        raw = fields.get(b"e") or fields.get("e")
        if raw is None:
            continue
        ev = orjson.loads(raw)
        ev["seq"] = stream_seq(sid)
        out.append(ev)
    return out


class RedisStreamSource(Source):
    live = True
    REFUSAL = ("the view of every replica is read-only: change settings on one replica "
               "(contextwarden tui --home ITS_DATA_DIR); the others follow through the shared state")

    def __init__(self, url: str, prefix: str = "cw", *, block_ms: int = 1000) -> None:
        self.url = url
        self.key = f"{prefix}:events"
        self.block_ms = block_ms
        self.description = f"{url} ({self.key}, every replica)"

    async def run(self, post: Post) -> None:
        last: Any = None  # the stream id read last
        while True:
            r = aioredis.Redis.from_url(self.url, socket_connect_timeout=3)
            try:
                post(ConnectionChanged("connecting", self.description))
                if last is None:
                    newest = await r.xrevrange(self.key, count=SNAPSHOT_EVENTS)
                    entries = list(reversed(newest or []))
                    last = entries[-1][0] if entries else b"0-0"
                    post(SnapshotReceived({"kind": "snapshot", "events": decode_entries(entries)}))
                post(ConnectionChanged("connected", self.description))
                while True:
                    got: Any = await r.xread({self.key: last}, block=self.block_ms, count=500)
                    for _key, batch in got or []:
                        if batch:
                            last = batch[-1][0]
                            post(EventsReceived(decode_entries(batch), {}))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                post(ConnectionChanged("disconnected", f"{type(e).__name__}: {e}"))
            finally:
                await r.aclose()
            await asyncio.sleep(2)
