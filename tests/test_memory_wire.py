"""The memory socket's codec: service objects round-trip by class name; anything else is refused."""

import threading

import numpy as np
import orjson
import pytest

from contextwarden.memory import wire
from contextwarden.memory.items import MemoryItem
from contextwarden.memory.retrieve import Hit, HistoryIndex, Query, Retrieval
from contextwarden.settings import Settings


def _trip(obj):
    return wire.decode(orjson.loads(orjson.dumps(wire.encode(obj))))


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


def test_the_history_test_travels_and_answers_the_same():
    h = HistoryIndex(["the whole tool output, line one is long enough\nand line two is long enough too"])
    contains = _trip(h.__contains__)
    for text in ("the whole tool output, line one is long enough", "something else entirely, not in it"):
        assert contains(text) == (text in h)


def test_unsendable_and_foreign_objects_are_refused():
    with pytest.raises(TypeError):
        wire.encode(threading.Lock())
    with pytest.raises(TypeError):
        wire.decode({"$C": "os:system", "v": {}})
