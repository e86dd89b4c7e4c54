"""With a shared Redis state: every replica's events go to one Redis stream (``<prefix>:events``), which
``contextwarden tui --redis URL`` reads. The bus subscriber appends to a bounded queue and one thread
writes batches (``XADD ... MAXLEN ~``); while Redis is down, events are dropped (events.jsonl has them).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

from contextwarden.core.events import Event
from contextwarden.core.runtime import Runtime

from .perruntime import PerRuntime

log = logging.getLogger(__name__)

STREAM_MAX = 20_000  # events kept in the stream (approximately: MAXLEN ~)
QUEUE_MAX = 10_000  # events waiting to be written; older ones are dropped first
BATCH = 500


class EventPublisher:
    def __init__(self, runtime: Runtime) -> None:
        st: Any = runtime.state
        self.r = st.r  # the state's client (thread-safe, pooled)
        self.key = f"{st.prefix}:events"
        self._q: deque[bytes] = deque(maxlen=QUEUE_MAX)
        self._cv = threading.Condition()
        self._stop = False
        self.sent = 0
        self.dropped = 0
        self._unsubscribe = runtime.bus.subscribe(self._on_event)
        self._thread = threading.Thread(target=self._main, name="cw-event-stream", daemon=True)
        self._thread.start()

    def _on_event(self, ev: Event) -> None:
        with self._cv:
            if len(self._q) == self._q.maxlen:
                self.dropped += 1
            self._q.append(ev.to_json())
            self._cv.notify()

    def _main(self) -> None:
        while True:
            with self._cv:
                while not self._q and not self._stop:
                    self._cv.wait()
                if self._stop and not self._q:
                    return
                batch = [self._q.popleft() for _ in range(min(BATCH, len(self._q)))]
            try:
                p = self.r.pipeline(transaction=False)
                for b in batch:
                    p.xadd(self.key, {"e": b}, maxlen=STREAM_MAX, approximate=True)
                p.execute()
                self.sent += len(batch)
            except Exception:  # Redis down: these are lost to the stream (events.jsonl has them)
                self.dropped += len(batch)
                with self._cv:
                    if not self._stop:
                        self._cv.wait(1.0)

    def stop(self) -> None:
        self._unsubscribe()
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=2)


class EventStream(PerRuntime):
    """mitmproxy addon: publishes the runtime's events to Redis when the state is shared there."""

    what = "event stream"

    def start(self, rt: Runtime) -> EventPublisher | None:
        if not hasattr(rt.state, "r"):
            return None
        pub = EventPublisher(rt)
        log.info(f"contextwarden: events published to the Redis stream {pub.key}")
        return pub
