"""The memory process's dispatch: ``flush`` ("everything submitted so far is stored") answers after the
ingestion calls sent before it, though it runs on another thread than they do. Beside two CPU-bound loops
a flush answered first, and a search right after it found none of the turn's items."""

from __future__ import annotations

import socket
import threading
import time

from contextwarden.memory import wire
from contextwarden.memory.server import MemoryServer


class SlowIngestion:
    """A service whose ingestion is slow (a loaded machine), and whose flush says what was taken in."""

    def __init__(self) -> None:
        self.taken: list[str] = []

    def submit(self, items, **info) -> bool:
        time.sleep(0.5)
        self.taken += items
        return True

    def flush(self, timeout: float) -> list[str]:
        return list(self.taken)


def test_a_flush_answers_after_the_submits_sent_before_it(tmp_path):
    server = MemoryServer(tmp_path, tmp_path / "memory.sock")
    server.service = SlowIngestion()  # type: ignore[assignment]
    ours, theirs = socket.socketpair()
    serving = threading.Thread(target=server._serve_conn, args=(theirs,), daemon=True)
    serving.start()
    try:
        wire.send_frame(ours, {"id": 1, "op": "call", "m": "submit", "a": [["turn 1"]], "k": {}})
        wire.send_frame(ours, {"id": 2, "op": "call", "m": "submit", "a": [["turn 2"]], "k": {}})
        wire.send_frame(ours, {"id": 3, "op": "call", "m": "flush", "a": [5], "k": {}})
        ours.settimeout(10)
        replies = {}
        while 3 not in replies:
            frame = wire.recv_frame(ours)
            replies[frame["id"]] = frame
        assert replies[3]["r"] == ["turn 1", "turn 2"]
    finally:
        ours.close()
        serving.join(10)
        server._pool.shutdown(wait=False)
        server._background.shutdown(wait=False)
