"""The state backends (SQLite, Redis on a real redis-server) behind one interface: atomic updates
shared by replicas, the cache rule for a shared backend, failing open while the server is down,
sealing at rest, and run-time settings and bypass reaching every replica."""

from __future__ import annotations

import itertools
import subprocess
import threading
import time

import pytest

from contextwarden.core.events import EventBus
from contextwarden.models.base import ApiKind
from contextwarden.plugins import compaction as comp
from contextwarden.settings import load_settings
from contextwarden.store.state import RedisStateStore, StateStore, StateUnavailable, open_state
from contextwarden.store.statecache import StateCache
from contextwarden.util.sealing import Sealer, SealError, new_key
from tests.support.redis_server import RedisServer
from tests.support.stages import Harness, anthropic_tool_loop, settings_overrides
from tests.support.wait import wait_until

_prefix = itertools.count()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as rs:
        yield rs


@pytest.fixture
def prefix() -> str:
    return f"t{next(_prefix)}-{time.time_ns()}"


def make_store(kind: str, tmp_path, redis_server, prefix, sealer=None, bus=None):
    if kind == "sqlite":
        return StateStore(tmp_path / "state.sqlite", sealer)
    return RedisStateStore(redis_server.url, sealer, bus=bus, prefix=prefix)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_update_many_on_both_backends(kind, tmp_path, redis_server, prefix):
    """Several keys in one transaction (a decision's records, control record and versions): a later
    ``fn`` sees an earlier one's value; nothing is stored when one fails; a concurrent writer's change
    is decided again, not lost."""
    st = make_store(kind, tmp_path, redis_server, prefix)
    st.put("a", "k", {"n": 1})
    assert st.update_many([("a", "k", lambda c: {"n": c["n"] + 1}), ("b", "k", lambda c: {"after": (c or {}).get("n")}),
                           ("a", "k", lambda c: {"n": c["n"] * 10})]) == [{"n": 2}, {"after": None}, {"n": 20}]
    assert st.get("a", "k") == {"n": 20} and st.items("b") == [("k", {"after": None})]

    def boom(cur):
        raise RuntimeError("no")
    with pytest.raises(RuntimeError):
        st.update_many([("a", "k", lambda c: {"n": -1}), ("c", "k", lambda c: 1), ("a", "k", boom)])
    assert st.get("a", "k") == {"n": 20} and st.get("c", "k") is None
    # two writers adding to one key at once: every addition kept
    other = make_store(kind, tmp_path, redis_server, prefix)
    def add(store, tag):
        for i in range(30):
            store.update_many([("a", "list", lambda c, t=f"{tag}{i}": (c or []) + [t]), ("a", "count", lambda c: (c or 0) + 1)])
    ts = [threading.Thread(target=add, args=(x, tag)) for x, tag in ((st, "s"), (other, "o"))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(st.get("a", "list")) == sorted([f"s{i}" for i in range(30)] + [f"o{i}" for i in range(30)])
    assert st.get("a", "count") == 60
    other.close()
    st.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_one_interface_on_both_backends(kind, tmp_path, redis_server, prefix):
    st = make_store(kind, tmp_path, redis_server, prefix)
    assert st.get("ns", "a") is None and st.get("ns", "a", 5) == 5
    st.put("ns", "a", {"x": [1, 2]})
    st.put("ns", "b", 2)
    st.put("other", "a", 3)
    assert st.get("ns", "a") == {"x": [1, 2]}
    assert st.items("ns") == [("a", {"x": [1, 2]}), ("b", 2)]
    assert st.update("ns", "b", lambda cur: cur + 1) == 3
    same = st.get("ns", "a")
    assert st.update("ns", "a", lambda cur: cur) == same  # unchanged: nothing written
    st.delete("ns", "a")
    assert st.items("ns") == [("b", 3)]
    st.delete("ns")
    assert st.items("ns") == [] and st.get("other", "a") == 3
    st.close()


def test_concurrent_updates_from_two_replicas_lose_nothing(redis_server, prefix):
    stores = [RedisStateStore(redis_server.url, prefix=prefix) for _ in range(2)]

    def work(st):
        for _ in range(40):
            st.update("budget", "session:s", lambda cur: {"used": int((cur or {}).get("used", 0)) + 10})

    threads = [threading.Thread(target=work, args=(st,)) for st in stores for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stores[0].get("budget", "session:s") == {"used": 2 * 3 * 40 * 10}


def test_shared_cache_never_serves_what_another_replica_replaced(redis_server, prefix):
    a = StateCache(RedisStateStore(redis_server.url, prefix=prefix))
    b = StateCache(RedisStateStore(redis_server.url, prefix=prefix))
    a.put("clearing", "s", {"v": 1})
    first = b.get("clearing", "s")
    assert first == {"v": 1}
    assert b.get("clearing", "s") is first  # unchanged bytes: the very object (stages compare by identity)
    a.put("clearing", "s", {"v": 2})
    assert b.get("clearing", "s") == {"v": 2}
    # persist=False is written anyway on a shared backend: the other replica must see the same rhythm
    a.put("compaction_seen", "s", {"n": 7}, persist=False)
    assert b.get("compaction_seen", "s") == {"n": 7}


def test_redis_down_fails_fast_and_is_picked_up_again(tmp_path):
    bus = EventBus()
    events = []
    bus.subscribe(events.append)
    with RedisServer(tmp_path) as rs:
        st = RedisStateStore(rs.url, bus=bus, prefix="x", retry_s=5)
        st.put("ns", "k", {"kept": True})
        rs.stop()
        with pytest.raises(StateUnavailable):
            st.get("ns", "k")
        with pytest.raises(StateUnavailable, match=r"unreachable \(since"):  # within retry_s: not even tried
            st.put("ns", "k", 1)
        assert not st.available and not st.ping()
        downs = [e for e in events if e.type == "error" and e.data.get("where") == "state"]
        assert len(downs) == 1, "going down is reported once"
        rs.start()
        assert wait_until(st.ping, 10, interval=0.1)
        assert st.available and st.get("ns", "k") == {"kept": True}  # the append-only file kept it
        assert [e.data["status"] for e in events if e.type == "state"] == ["up"]


def _harness(home, prefix, url, target):
    # a window the 12-turn loop fills past the hard threshold: compaction decides at once
    over = settings_overrides(window=12_000, stages=["compaction"],
                              compaction={"protect_recent_turns": 2, "min_span_tokens": 500, "soft_threshold": 0.5,
                                          "hard_threshold": 0.6, "target": target},
                              state={"url": url, "prefix": prefix})
    return Harness(home, overrides=over)


def test_racing_first_compaction_resolves_to_one_decision_both_apply(tmp_path, redis_server, prefix):
    body = anthropic_tool_loop(12, result_words=300)
    # control: on their own, the two replicas' settings decide different compactions
    alone = [_harness(tmp_path / f"alone{i}", prefix + f"-alone{i}", redis_server.url, t) for i, t in enumerate((0.4, 0.15))]
    bodies = [h.send(ApiKind.ANTHROPIC, body).body for h in alone]
    assert bodies[0] != bodies[1]
    for h in alone:
        h.close()
    # shared: B reads the session (no decision yet), then A decides and stores first, then B stores
    a = _harness(tmp_path / "a", prefix, redis_server.url, 0.4)
    b = _harness(tmp_path / "b", prefix, redis_server.url, 0.15)
    real_update = b.rt.state.update
    sent_a = []

    def a_gets_in_first(ns, key, fn):
        if ns == comp.NS and not sent_a:
            sent_a.append(a.send(ApiKind.ANTHROPIC, body))
        return real_update(ns, key, fn)

    b.rt.state.update = a_gets_in_first
    sent_b = b.send(ApiKind.ANTHROPIC, body)
    assert sent_a and sent_a[0].changed and sent_b.changed
    assert sent_b.body == sent_a[0].body == bodies[0], "B applies the decision A stored first"
    stored = a.rt.state.items(comp.NS)
    assert len(stored) == 1 and len(stored[0][1]["decisions"]) == 1
    [ev] = sent_b.events("compaction")
    assert ev["applied"] and ev["reused"]
    # and the next request of the session, on either replica, re-applies it byte for byte
    assert b.send(ApiKind.ANTHROPIC, body).body == a.send(ApiKind.ANTHROPIC, body).body == bodies[0]
    a.close()
    b.close()


def test_run_time_settings_and_bypass_reach_every_replica(tmp_path, redis_server, prefix):
    over = settings_overrides(window=50_000, stages=["clearing"], state={"url": redis_server.url, "prefix": prefix,
                                                                        "sync_s": 0.1})
    a, b = Harness(tmp_path / "a", overrides=over), Harness(tmp_path / "b", overrides=over)
    assert a.rt.replica  # (host:pid when state.replica is not set)
    a.rt.set_bypass("sess-9", True)
    a.apply({"clearing": {"trigger_tokens": 12345}})
    assert wait_until(lambda: "sess-9" in b.rt.bypass and b.rt.settings.clearing.trigger_tokens == 12345, 10), \
        "replica B never saw A's run-time changes"
    b.rt.set_bypass("sess-8", True)
    assert set(b.rt.state.get("runtime", "bypass")) == {"sess-8", "sess-9"}
    a.close()
    b.close()


# ---------------------------------------------------------------------------------------------------
# encryption at rest


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_sealed_values_are_unreadable_and_a_wrong_key_is_an_error(kind, tmp_path, redis_server, prefix, monkeypatch):
    monkeypatch.setenv("CONTEXTWARDEN_KEY", new_key())
    settings = load_settings("default", tmp_path, overrides={"state": {"url": redis_server.url if kind == "redis" else "",
                                                                        "prefix": prefix}})
    st = open_state(settings, tmp_path)
    assert st.sealer.on
    st.put("compaction", "sess", {"summary": "the-secret-summary-text"})
    assert st.get("compaction", "sess") == {"summary": "the-secret-summary-text"}
    if kind == "sqlite":
        st.close()
        raw = (tmp_path / "state.sqlite").read_bytes()
        wal = tmp_path / "state.sqlite-wal"
        raw += wal.read_bytes() if wal.exists() else b""
        assert b"the-secret-summary-text" not in raw and b"summary" not in raw
    else:
        raw = subprocess.run(["redis-cli", "-p", str(redis_server.port), "--no-raw", "GET",
                              f"{prefix}:compaction:sess"], capture_output=True).stdout
        assert raw and b"the-secret-summary-text" not in raw
        st.close()
    monkeypatch.setenv("CONTEXTWARDEN_KEY", new_key())
    with pytest.raises(SealError, match="wrong key"):
        open_state(settings, tmp_path)
    monkeypatch.delenv("CONTEXTWARDEN_KEY")
    with pytest.raises(SealError, match="no key is set"):
        open_state(settings, tmp_path)


def test_malformed_key_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CONTEXTWARDEN_KEY", "too-short")
    with pytest.raises(SealError, match="32 bytes"):
        open_state(load_settings("default", tmp_path), tmp_path)


def test_sealed_text_round_trips_and_plain_text_passes():
    s = Sealer(bytes(range(32)))
    t = s.seal_text("héllo wörld")
    assert t.startswith("cw1:") and "llo" not in t
    assert s.open_text(t) == "héllo wörld"
    assert s.open_text("plain text") == "plain text"
    with pytest.raises(SealError):
        Sealer(None).open_text(t)


def test_a_replica_started_while_redis_is_down_takes_the_shared_salt_when_it_is_back(tmp_path):
    with RedisServer(tmp_path) as rs:
        over = settings_overrides(window=50_000, stages=["clearing"], state={"url": rs.url, "prefix": "salt"})
        a = Harness(tmp_path / "a", overrides=over)
        rs.stop()
        b = Harness(tmp_path / "b", overrides=over)  # starts without the server: traffic flows, unshared
        assert b.rt.salt != a.rt.salt
        rs.start()
        # the next request after the server is back keys tenants like A
        assert wait_until(lambda: b.rt.salt == a.rt.salt, 10, interval=0.2)
        a.close()
        b.close()
