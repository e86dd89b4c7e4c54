"""Structured events: an in-process bus and a rotating JSONL log under ``cw_home``.

What is stored or shown (:meth:`Event.to_dict`, :meth:`Event.to_json`: the log and the event server)
goes through :func:`contextwarden.util.scrub.scrub`, on the consumer's thread, once an event.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..util.scrub import scrub

_seq = itertools.count(1)


def continue_after(seq: int) -> None:
    """The next events are numbered after ``seq`` (an engine that exec'd itself keeps its events' order)."""
    deque(itertools.islice(_seq, max(0, seq - next(_seq))), maxlen=0)


@dataclass(slots=True)
class Event:
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    flow_id: str | None = None
    session: str | None = None
    ts: float = field(default_factory=time.time)
    seq: int = field(default_factory=lambda: next(_seq))
    _safe: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    replica: str | None = None  # the proxy that served it, when several share one state
    _json: bytes | None = field(default=None, repr=False, compare=False)

    def safe_data(self) -> dict[str, Any]:
        """The data with every secret redacted (:func:`contextwarden.util.scrub.scrub`), worked out once, by
        the first consumer that writes or sends the event (on its own thread, never the emitter's)."""
        safe = self._safe
        if safe is None:
            try:
                safe = scrub(self.data)
            except Exception:  # the data goes no further unscrubbed
                safe = {"error": "event data could not be scrubbed"}
            self._safe = safe
        return safe

    def to_dict(self) -> dict[str, Any]:
        """The event as it may be stored or shown: its data scrubbed of secrets."""
        d = {"seq": self.seq, "ts": self.ts, "type": self.type, "flow_id": self.flow_id,
             "session": self.session, "data": self.safe_data()}
        if self.replica is not None:
            d["replica"] = self.replica
        return d

    def to_json(self) -> bytes:
        """:meth:`to_dict` as JSON, worked out once: the log writes it, the event server sends it."""
        j = self._json
        if j is None:
            j = self._json = orjson.dumps(self.to_dict(), default=str)
        return j

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        return cls(type=d["type"], data=d.get("data") or {}, flow_id=d.get("flow_id"),
                   session=d.get("session"), ts=d.get("ts", 0.0), seq=d.get("seq", 0), replica=d.get("replica"))


Subscriber = Callable[[Event], None]


class EventBus:
    """Thread-safe publish/subscribe. Subscribers must be quick; slow consumers queue their own work."""

    def __init__(self, recent: int = 2000) -> None:
        # replaced whole on (un)subscribing, never edited: publishing reads it without the lock
        self._subs: tuple[Subscriber, ...] = ()
        self._lock = threading.Lock()
        self.recent: deque[Event] = deque(maxlen=recent)
        self.replica: str | None = None  # stamped on every event published here (Runtime sets it)

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        with self._lock:
            self._subs = (*self._subs, fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._subs:
                    subs = list(self._subs)
                    subs.remove(fn)
                    self._subs = tuple(subs)

        return unsubscribe

    def emit(self, type: str, data: dict[str, Any] | None = None, *, flow_id: str | None = None,
             session: str | None = None) -> Event:
        ev = Event(type, data or {}, flow_id, session, time.time(), next(_seq))
        self.publish(ev)
        return ev

    def forget_json(self) -> None:
        """Drop the recent events' JSON (written and sent by now; :meth:`Event.to_json` makes it again)."""
        for ev in list(self.recent):
            ev._json = None

    def publish(self, ev: Event) -> None:
        if ev.replica is None and self.replica is not None:
            ev.replica = self.replica
        self.recent.append(ev)
        for fn in self._subs:
            try:
                fn(ev)
            except Exception:  # a broken consumer must not break traffic
                pass


class JsonlLog:
    """Appends events to ``events.jsonl`` from a writer thread, rotating by size.

    Waking the writer is the dear part on a busy proxy, so the emitter appends to a deque, and events of
    a stage thread (``cw-stage``) and the ``request`` event of a ``cw-core`` thread wake nobody: the
    request's ``forward`` event wakes the writer, which writes them with it in one ``write``. An event
    with none after it waits at most ``straggler_s``.
    """

    # (thread name prefix, the types of its events that wake nobody: None for all)
    DEFERRED: tuple[tuple[str, frozenset[str] | None], ...] = (("cw-stage", None), ("cw-core", frozenset({"request"})))

    def __init__(self, directory: Path, max_bytes: int = 20_000_000, backups: int = 5,
                 straggler_s: float = 0.1) -> None:
        self.path = Path(directory) / "events.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.backups = backups
        self.straggler_s = straggler_s
        self._buf: deque[Event] = deque()
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="cw-eventlog", daemon=True)
        self._thread.start()

    def __call__(self, ev: Event) -> None:
        self._buf.append(ev)  # (atomic; before the token: the writer drains tokens, then the deque)
        name = threading.current_thread().name  # (not remembered by thread id: a new thread may reuse a dead one's)
        for prefix, types in self.DEFERRED:
            if name.startswith(prefix):
                if types is None or ev.type in types:
                    return
                break
        self._wake.put(None)

    def close(self, timeout: float = 5.0) -> None:
        self._closing = True
        self._wake.put(None)
        self._thread.join(timeout)

    def _rotate(self) -> None:
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"events.jsonl.{i}")
            if src.exists():
                src.replace(self.path.with_name(f"events.jsonl.{i + 1}"))
        if self.path.exists():
            self.path.replace(self.path.with_name("events.jsonl.1"))

    def _open(self) -> tuple[int, int]:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # (as open(path, "ab"))
        return fd, os.fstat(fd).st_size

    def _run(self) -> None:
        fd, size = self._open()
        wake, buf, straggler_s = self._wake, self._buf, self.straggler_s
        try:
            while True:
                try:
                    wake.get(timeout=straggler_s)  # (the interpreter lock released while it waits)
                except queue.Empty:
                    if not buf and not self._closing:
                        continue
                while not wake.empty():  # tokens first: an event appended after this has one still
                    wake.get_nowait()
                batch = []
                while buf:
                    batch.append(buf.popleft())
                lines = _lines(batch)
                if lines:
                    chunk = b"\n".join(lines) + b"\n"
                    _write_all(fd, chunk)
                    size += len(chunk)
                    if size > self.max_bytes:
                        os.close(fd)
                        self._rotate()
                        fd, size = self._open()
                if self._closing and not buf:
                    break
        finally:
            os.close(fd)


def _lines(batch: list[Event]) -> list[bytes]:
    """Each event's JSON; one that cannot be serialised is left out (it must not stop the writer)."""
    out = []
    for e in batch:
        try:
            out.append(e.to_json())
        except Exception:
            pass
    return out


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def read_log(path: Path) -> list[Event]:
    """Events from a JSONL log; truncated lines (a crash mid-write) are skipped."""
    out = []
    with open(path, "rb") as f:
        for line in f:
            try:
                out.append(Event.from_dict(orjson.loads(line)))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
    return out
