"""StateCache.put(soon=True): the value is read back at once and written with the others put so, in one
transaction, without waiting for the store's lock (every request's own writes take it); the runtime writes
what still waits when it closes."""

from __future__ import annotations

import threading

from contextwarden.core.runtime import Runtime
from contextwarden.settings import load_settings
from contextwarden.store import statecache
from contextwarden.store.state import StateStore
from contextwarden.store.statecache import StateCache, state_cache
from tests.support.wait import wait_until


def test_a_value_put_soon_does_not_wait_for_the_stores_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(statecache, "WRITE_EVERY_S", 3600.0)  # not due: nothing is written by the put
    store = StateStore(tmp_path / "state.sqlite")
    cache = StateCache(store)
    with store._lock:  # a request's write holds it (under load, for a long while)
        put = threading.Thread(target=cache.put, args=("memory.ingested", "t:s1", {"n": 4}), kwargs={"soon": True})
        put.start()
        put.join(10)
        assert not put.is_alive()  # returned without the lock
        assert cache.get("memory.ingested", "t:s1") == {"n": 4}  # read back at once
    assert StateStore(tmp_path / "state.sqlite").get("memory.ingested", "t:s1") is None  # not written yet
    cache.flush()
    assert StateStore(tmp_path / "state.sqlite").get("memory.ingested", "t:s1") == {"n": 4}


def test_values_put_soon_are_written_together_once_due(tmp_path, monkeypatch):
    monkeypatch.setattr(statecache, "WRITE_EVERY_S", 3600.0)
    store = StateStore(tmp_path / "state.sqlite")
    writes: list[int] = []
    real = store.update_many
    monkeypatch.setattr(store, "update_many", lambda updates: writes.append(len(updates)) or real(updates))
    cache = StateCache(store)
    for n in range(3):
        cache.put("memory.ingested", "t:s1", {"n": n}, soon=True)
        cache.put("memory.ingested", "t:s2", {"n": 10 + n}, soon=True)
    assert writes == []
    monkeypatch.setattr(statecache, "WRITE_EVERY_S", 0.0)  # due: the next put writes everything waiting
    cache.put("memory.ingested", "t:s3", {"n": 20}, soon=True)
    assert writes == [3]  # one transaction, each key's newest value
    other = StateStore(tmp_path / "state.sqlite")
    assert [other.get("memory.ingested", f"t:s{k}") for k in (1, 2, 3)] == [{"n": 2}, {"n": 12}, {"n": 20}]


def test_the_runtime_writes_what_waits_when_it_closes(tmp_path, monkeypatch):
    monkeypatch.setattr(statecache, "WRITE_EVERY_S", 3600.0)
    settings = load_settings("observe-only", tmp_path).model_copy(deep=True)
    settings.memory.enabled = False
    rt = Runtime(settings, tmp_path / "home")
    state_cache(rt).put("memory.ingested", "t:s1", {"n": 7, "h": "x"}, soon=True)
    rt.close()
    assert StateStore(tmp_path / "home" / "state.sqlite").get("memory.ingested", "t:s1") == {"n": 7, "h": "x"}


def test_a_value_put_soon_is_written_without_another_put(tmp_path, monkeypatch):
    # the proxy goes idle after a turn: its marker must not wait for the next put or the runtime's close
    monkeypatch.setattr(statecache, "WRITE_EVERY_S", 0.2)
    cache = StateCache(StateStore(tmp_path / "state.sqlite"))
    cache.put("memory.ingested", "t:s0", {"n": 0}, soon=True)  # due (none written yet): written at once
    cache.put("memory.ingested", "t:s1", {"n": 1}, soon=True)  # not due: waits for the timer
    other = StateStore(tmp_path / "state.sqlite")
    assert wait_until(lambda: other.get("memory.ingested", "t:s1"), timeout=10) == {"n": 1}


def test_a_value_waiting_to_be_written_is_read_back_after_memory_let_it_go(tmp_path, monkeypatch):
    monkeypatch.setattr(statecache, "WRITE_EVERY_S", 3600.0)
    store = StateStore(tmp_path / "state.sqlite")
    store.put("memory.ingested", "t:s1", {"n": 1})
    cache = StateCache(store, max_entries=2)
    cache.put("memory.ingested", "t:s1", {"n": 2}, soon=True)
    for k in range(8):  # other sessions' records push it out of memory
        cache.put("sessions", f"k{k}", {"k": k})
    assert cache._lru.peek(("memory.ingested", "t:s1")) is None
    assert cache.get("memory.ingested", "t:s1") == {"n": 2}  # not the store's older value


def test_a_view_is_parsed_once_while_its_value_stays_the_same_object(tmp_path):
    """``view``: a record read every request is parsed again only once it changes (a new value put, or the
    value ``update`` stored)."""
    store = StateStore(tmp_path / "state.sqlite3", None)
    cache = StateCache(store)
    parsed: list[object] = []

    def parse(v):
        parsed.append(v)
        return ("typed", v)

    assert cache.view("ns", "k", parse) == ("typed", None) and cache.view("ns", "k", parse) == ("typed", None)
    cache.put("ns", "k", {"n": 1})
    assert cache.view("ns", "k", parse) == ("typed", {"n": 1}) == cache.view("ns", "k", parse)
    cache.update("ns", "k", lambda cur: {"n": cur["n"] + 1})
    assert cache.view("ns", "k", parse) == ("typed", {"n": 2}) == cache.view("ns", "k", parse)
    assert parsed == [None, {"n": 1}, {"n": 2}]
    store.close()
