"""The memory socket's frames: service objects round-trip; what cannot be sent is refused before sending."""

import socket
import threading

import numpy as np
import pytest

from contextwarden.memory import wire
from contextwarden.memory.items import MemoryItem
from contextwarden.memory.retrieve import HistoryIndex, Hit, Query, Retrieval, text_keys_cache
from contextwarden.settings import Settings
from tests.support.wait import wait_until


def _trip(obj):
    a, b = socket.socketpair()
    with a, b:
        wire.send_frame(a, obj)
        return wire.recv_frame(b)


def test_service_objects_round_trip():
    it = MemoryItem(text="the deploy script reads STAGING_HOST", session="s", tenant="t", turn=3, role="user",
                    kind="message", tags=["deploy"], source_id="m-1")
    ret = Retrieval(hits=[Hit(it, fused=0.25, vector=0.5, vector_rank=1)], candidates=1, timings={"lexical_ms": 1.0})
    back = _trip({"r": ret, "q": Query("deploy", "ctx"), "t": (1, "a"), "s": {1, 2}, "b": b"\x00\xff",
                  "a": np.arange(3, dtype=np.float32), "k": {("x", 1): 2}, "settings": Settings()})
    assert back["r"] == ret and back["r"].hits[0].item.id == it.id and back["r"].hits[0].item.ts == it.ts
    assert back["q"] == Query("deploy", "ctx") and back["t"] == (1, "a") and back["s"] == {1, 2}
    assert back["b"] == b"\x00\xff" and back["a"].dtype == np.float32 and back["k"] == {("x", 1): 2}
    assert back["settings"] == Settings()


def test_the_history_test_travels_without_its_cache_and_answers_the_same():
    mine = text_keys_cache()
    h = HistoryIndex(["the whole tool output, line one is long enough\nand line two is long enough too"], mine)
    assert len(mine) == 1  # the history's text, split and hashed in the cache it was given
    back = _trip(h)
    assert back.keys is not mine and len(back.keys) == 0  # the runtime's cache stays in its process
    theirs = text_keys_cache()
    service = back.using(theirs)  # the memory service's own, kept from search to search
    for text in ("the whole tool output, line one is long enough", "something else entirely, not in it"):
        assert service(text) == (text in h) == _trip(h.__contains__)(text)
    assert len(theirs) == 2 and len(mine) == 3


def test_unsendable_objects_are_refused_before_anything_is_sent():
    with pytest.raises(TypeError):
        wire.frame_bytes(threading.Lock())
    with pytest.raises(TypeError):
        wire.frame_bytes({"exclude": lambda text: False})


def test_the_outbox_writes_in_order_and_never_makes_its_caller_wait_for_the_reader():
    """A reader that does not read (a busy memory process) fills the socket; the caller's puts return at
    once, up to the bound, and everything queued arrives in order once the reader reads."""
    a, b = socket.socketpair()
    try:
        ob = wire.Outbox(a, max_bytes=2_000_000)
        big = {"text": "x" * 100_000}
        sent = 0
        while ob.put({**big, "n": sent}):  # nobody reads b: past the socket's buffers, the outbox holds them
            sent += 1
        assert 10 <= sent <= 40  # (the bound, not a blocked write, stopped it: put said no)
        assert ob.queued > 1_000_000
        got = [wire.recv_frame(b)["n"] for _ in range(sent)]  # read now: all of them, in order
        assert got == list(range(sent))
        assert ob.put({"n": "after"}) and wire.recv_frame(b) == {"n": "after"}
        with pytest.raises(ValueError):
            ob.put({"text": "y" * (wire.MAX_FRAME + 1)})
        b.close()
        with pytest.raises(OSError):  # the peer is gone: the writer's error is every later put's
            wait_until(lambda: ob.put(big) and False, 10, interval=0.01)
    finally:
        a.close()
        b.close()
