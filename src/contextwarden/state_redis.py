"""The state on a Redis-protocol server (Redis, Valkey, a managed one), shared by several proxies.

One string key per value (``<prefix>:<ns>:<key>``) and one set per namespace listing its keys (for
``items``). ``update`` is compare-and-set with WATCH/MULTI: two replicas deciding the same session at
once both read the winner's value afterwards, so both apply one decision and send the same bytes.

A server that cannot be reached never stops traffic: every call raises :class:`StateUnavailable` at
once (the stage that asked fails open, the client's request goes out as it was sent), and for
``retry_s`` after a failure the server is not even tried. The first call after that tries again, so the
proxy picks the server up when it is back, without a restart. Going down and coming back are each
reported once on the event bus (``error`` with ``where: "state"``, then ``state`` with ``status: "up"``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from .sealing import Sealer
from .state import Codec, StateUnavailable

RETRY_S = 1.0
MAX_CAS_TRIES = 50


class RedisStateStore(Codec):
    shared = True

    def __init__(self, url: str, sealer: Sealer | None = None, *, bus=None, prefix: str = "cw",
                 timeout_s: float = 0.5, retry_s: float = RETRY_S) -> None:
        import redis

        super().__init__(sealer)
        self.url = url
        self.bus = bus
        self.prefix = prefix
        self.retry_s = retry_s
        self._redis_errors = (redis.ConnectionError, redis.TimeoutError, OSError)
        self._watch_error = redis.WatchError
        self.r = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                      health_check_interval=0)
        self._down_since: float | None = None
        self._last_try = 0.0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ availability

    @property
    def available(self) -> bool:
        return self._down_since is None

    def _call(self, fn: Callable[[], Any]) -> Any:
        if self._down_since is not None and time.monotonic() - self._last_try < self.retry_s:
            raise StateUnavailable(f"state backend {self._where()} unreachable (since {self._down_for()})")
        try:
            out = fn()
        except self._redis_errors as e:
            self._failed(e)
            raise StateUnavailable(f"state backend {self._where()} unreachable: {e}") from None
        if self._down_since is not None:
            self._recovered()
        return out

    def _where(self) -> str:
        kw = self.r.connection_pool.connection_kwargs
        return f"{kw.get('host', kw.get('path', '?'))}:{kw.get('port', '')}".rstrip(":")

    def _down_for(self) -> str:
        return f"{time.monotonic() - (self._down_since or time.monotonic()):.1f} s"

    def _failed(self, e: Exception) -> None:
        with self._lock:
            self._last_try = time.monotonic()
            first = self._down_since is None
            if first:
                self._down_since = self._last_try
        if first and self.bus is not None:
            self.bus.emit("error", {"where": "state", "message": f"state backend {self._where()} unreachable: {e}",
                                    "action": "requests forwarded unchanged until it is back"})

    def _recovered(self) -> None:
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None and self.bus is not None:
            self.bus.emit("state", {"status": "up", "backend": self._where(),
                                    "down_s": round(time.monotonic() - since, 3)})

    def ping(self) -> bool:
        """Whether the server answers now (always tried, even while failing fast: readiness probes and
        the run-time sync use it, so a server that is back is noticed within a probe)."""
        self._last_try = 0.0
        try:
            return bool(self._call(self.r.ping))
        except StateUnavailable:
            return False

    # ------------------------------------------------------------------ the interface

    def _k(self, ns: str, key: str) -> str:
        return f"{self.prefix}:{ns}:{key}"

    def _idx(self, ns: str) -> str:
        return f"{self.prefix}:ns:{ns}"

    def load(self, ns: str, key: str) -> bytes | None:
        return self._call(lambda: self.r.get(self._k(ns, key)))

    def store(self, ns: str, key: str, blob: bytes) -> None:
        def go():
            p = self.r.pipeline(transaction=True)
            p.set(self._k(ns, key), blob)
            p.sadd(self._idx(ns), key)
            p.execute()
        self._call(go)

    def update(self, ns: str, key: str, fn: Callable[[Any], Any]) -> Any:
        return self.update_many([(ns, key, fn)])[0]

    def update_many(self, updates: list[tuple[str, str, Callable[[Any], Any]]]) -> list[Any]:
        """Every ``(ns, key, fn)`` in one MULTI, every key watched: decided again, all of them, when
        another writer got in between (one round trip for the reads, one for the writes)."""
        keys = [self._k(ns, key) for ns, key, _ in updates]

        def go():
            for _ in range(MAX_CAS_TRIES):
                with self.r.pipeline(transaction=True) as p:
                    try:
                        p.watch(*dict.fromkeys(keys))
                        stored = dict(zip(keys, p.mget(keys))) if keys else {}
                        now: dict[str, Any] = {}  # key -> its value so far in this batch
                        out, writes = [], {}
                        for k, (ns, key, fn) in zip(keys, updates):
                            cur = now[k] if k in now else (self.decode(stored[k]) if stored[k] is not None else None)
                            new = fn(cur)
                            if new is not cur:
                                writes[k] = (ns, key, new)
                            now[k] = new
                            out.append(new)
                        if not writes:
                            p.unwatch()
                            return out
                        p.multi()
                        for k, (ns, key, new) in writes.items():
                            p.set(k, self.encode(new))
                            p.sadd(self._idx(ns), key)
                        p.execute()
                        return out
                    except self._watch_error:
                        continue
            raise RuntimeError("state update of several keys: too many concurrent writers")
        return self._call(go)

    def delete(self, ns: str, key: str | None = None) -> None:
        def go():
            if key is not None:
                p = self.r.pipeline(transaction=True)
                p.delete(self._k(ns, key))
                p.srem(self._idx(ns), key)
                p.execute()
                return
            keys = [self._k(ns, k.decode()) for k in self.r.smembers(self._idx(ns))]
            self.r.delete(self._idx(ns), *keys)
        self._call(go)

    def items(self, ns: str) -> list[tuple[str, Any]]:
        def go():
            keys = sorted(k.decode() for k in self.r.smembers(self._idx(ns)))
            blobs = self.r.mget([self._k(ns, k) for k in keys]) if keys else []
            return [(k, self.decode(b)) for k, b in zip(keys, blobs) if b is not None]
        return self._call(go)

    def close(self) -> None:
        try:
            self.r.close()
        except Exception:
            pass
