"""With a Chroma server shared by several proxies: what the other replicas ingest reaches this one's
BM25 index, so hybrid retrieval's lexical half sees the whole memory, not only this process's writes.

Every ``EVERY_S`` a background thread asks Chroma for the items stored since its last look (metadata
``ts``, with ``OVERLAP_S`` of slack for items that waited in another replica's ingestion queue, or
whose clock runs behind) and indexes the ones it does not have. Chroma answers such a filter by
scanning metadata, which is why this runs off the request path and not often.
"""

from __future__ import annotations

import threading
import time

EVERY_S = 10.0
OVERLAP_S = 600.0


class LexicalRefresh:
    def __init__(self, service) -> None:
        self.service = service  # .store, .lexical, .closed, .bus
        self.since = time.time()  # the start-up load covered what was stored before

    def refresh_once(self) -> int:
        """Index what was stored since the last look; returns how many items were new here."""
        store, lexical = self.service.store, self.service.lexical
        if store is None or not store.available:
            return 0
        started = time.time()
        new = [it for it in store.iter_items(where={"ts": {"$gte": self.since - OVERLAP_S}})
               if not lexical.contains(it.id, lexical.partition_of(it))]
        self.since = started
        return lexical.add(new) if new else 0

    def start(self) -> None:
        threading.Thread(target=self._main, name="cw-lexical-refresh", daemon=True).start()

    def _main(self) -> None:
        while not self.service.closed:
            time.sleep(EVERY_S)
            try:
                self.refresh_once()
            except Exception as e:  # Chroma away: the next round tries again
                self.service.bus.emit("error", {"where": "memory.lexical", "message": f"refresh: {type(e).__name__}: {e}",
                                                "action": "retried"})
