"""With a Chroma server shared by several proxies: what the other replicas ingest reaches this one's
BM25 index, so hybrid retrieval's lexical half sees the whole memory, not only this process's writes.

Every ``every_s`` a background thread asks Chroma for the items stored since its last look (metadata
``ts``, with ``overlap_s`` of slack for items that waited in another replica's ingestion queue, or
whose clock runs behind) and indexes the ones it does not have. Chroma answers such a filter by
scanning metadata, which is why this runs off the request path and not often.
"""

from __future__ import annotations

import threading
import time

EVERY_S = 10.0
OVERLAP_S = 600.0


class LexicalRefresh:
    def __init__(self, service, every_s: float = EVERY_S, overlap_s: float = OVERLAP_S) -> None:
        self.service = service  # .store, .lexical, .closed, .bus
        self.every_s = every_s
        self.overlap_s = overlap_s
        self.since = time.time()  # the start-up load covered what was stored before
        self.added = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh_once(self) -> int:
        """Index what was stored since the last look; returns how many items were new here."""
        store, lexical = self.service.store, self.service.lexical
        if store is None or not store.available:
            return 0
        started = time.time()
        new = [it for it in store.iter_items(where={"ts": {"$gte": self.since - self.overlap_s}}) 
               if not lexical.contains(it.id, lexical.partition_of(it))]
        n = lexical.add(new) if new else 0
        self.since = started
        self.added += n
        return n

    def start(self) -> LexicalRefresh:
        self._thread = threading.Thread(target=self._main, name="cw-lexical-refresh", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _main(self) -> None:
        while not self._stop.wait(self.every_s) and not self.service.closed:
            try:
                self.refresh_once()
            except Exception as e:  # Chroma away: the next round tries again
                bus = getattr(self.service, "bus", None)
                if bus is not None:
                    bus.emit("error", {"where": "memory.lexical", "message": f"refresh: {type(e).__name__}: {e}",
                                       "action": "retried"})
