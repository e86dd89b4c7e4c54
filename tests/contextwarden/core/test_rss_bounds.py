"""Issue 19's RSS: what only a full collection frees (mitmproxy's finished flows, cyclic) does not pile
up under load, and a finished flow no longer holds the request's context."""

from __future__ import annotations

import contextlib
import gc
import time
import weakref

import orjson
import pytest
from mitmproxy import http
from mitmproxy.test import tutils

from contextwarden.core.collector import FullCollections
from contextwarden.core.runtime import Runtime
from contextwarden.settings import load_settings
from contextwarden.wire.validate import FactCache
from tests.addons.test_interceptor import (  # noqa: F401
    anthropic_flow,
    body,
    harness_factory,  # noqa: F401
)
from tests.support.wait import wait_until


class _Flowish:
    """A cycle like mitmproxy's stream layer and its context, holding a request body."""

    def __init__(self) -> None:
        self.me = self
        self.body = bytes(1_000_000)


def _cycle() -> weakref.ref:
    return weakref.ref(_Flowish())


def test_a_full_collection_runs_when_none_ran_for_gc_full_s():
    def full_collections() -> int:
        return gc.get_stats()[2]["collections"]

    was = gc.isenabled()
    gc.disable()  # only the collections FullCollections runs
    try:
        # Another thread may run a full collection at any moment (a collector of a runtime an earlier
        # test left): a round in which one did is not read, and the next round tries again.
        for _ in range(5):
            n0 = full_collections()
            full = FullCollections()
            garbage = _cycle()
            not_due = full.due(10.0), garbage() is not None  # not due yet
            never = full.due(0), garbage() is not None  # 0: never
            full.last -= 10.0
            info = full.due(10.0)
            freed = garbage() is None
            # one that ran meanwhile (the interpreter's, the idle one) counts: the clock starts again
            gc.collect()
            full.last -= 10.0
            after_other = full.due(10.0)
            if full_collections() == n0 + 2:  # FullCollections' one and ours: nobody else's
                break
        else:
            pytest.fail("another thread collected in every round")
        assert not_due == (None, True) and never == (None, True)
        # (1 or 2: the instance, and its dict when the interpreter made one)
        assert info is not None and info["freed"] >= 1 and freed
        assert after_other is None
    finally:
        if was:
            gc.enable()


@contextlib.contextmanager
def _collecting_runtime(tmp_path, idle_s: float, forget_s: float = 30.0):
    """A runtime whose collector thread runs a full collection every second under load (and once idle
    for ``idle_s``), with the interpreter's own collector off: only the runtime's collections run."""
    settings = load_settings("observe-only", tmp_path).model_copy(deep=True)
    settings.pipeline.gc_full_s = 1.0
    settings.pipeline.gc_idle_s = idle_s
    settings.pipeline.forget_s = forget_s
    settings.memory.enabled = False
    rt = Runtime(settings, tmp_path / "home")
    was = gc.isenabled()
    try:
        rt.settle_gc("startup")
        gc.disable()
        yield rt
    finally:
        if was:
            gc.enable()
        rt.close()


def _gc_events(rt, reason: str) -> list[dict]:
    return [e.data for e in rt.bus.recent if e.type == "gc" and e.data.get("reason") == reason]


def test_the_proxy_collects_under_load(tmp_path):
    """Requests keep coming (never idle): the runtime's collector thread still runs a full collection
    within ``gc_full_s``, so a finished flow's cycle is freed while the load lasts."""
    with _collecting_runtime(tmp_path, 60.0) as rt:
        garbage = _cycle()

        def collected() -> bool:
            rt.last_request = time.monotonic()  # under load
            return garbage() is None and len(_gc_events(rt, "load")) >= 3
        # (the collection frees it before its event is emitted, after the trim: both are waited for;
        # then a few more collections, each a second apart, for the trims' cadence)
        wait_until(collected, 10)
        assert garbage() is None
        load = _gc_events(rt, "load")
        assert len(load) >= 3
        # the first followed by malloc_trim (no idle spell to do it in under a load that never pauses),
        # then none for TRIM_S (15 s)
        assert "trimmed" in load[0] and load[0]["trim_ms"] >= 0
        assert not any("trimmed" in d for d in load[1:])


async def test_a_finished_flow_lets_go_of_the_request(harness_factory):
    """After the response, the flow (cyclic garbage until a full collection) no longer holds the
    request's context or the response reader."""
    h = harness_factory()
    f = await h.send(anthropic_flow(body(stream=True)))
    st = f.metadata["contextwarden"]
    ctx = weakref.ref(st.ctx_future.result())
    f.response = tutils.tresp(status_code=200, content=b"", headers=http.Headers([(b"content-type", b"text/event-stream")]))
    h.observer.responseheaders(f)
    f.response.stream(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    await h.observer.response(f)
    assert "contextwarden" not in f.metadata and st.ctx_future is None and st.tap is None
    # the turn work (and a stage abandoned past its budget, on a loaded machine) lets go of it too;
    # a flow that kept it would keep it for good
    assert wait_until(lambda: ctx() is None, 30)  # by reference counting: no collection needed
    assert orjson.loads(f.request.content)["messages"]  # the flow itself is untouched


def test_under_load_the_survivors_are_frozen_and_the_idle_collection_frees_what_died_since(tmp_path):
    """``gc_freeze_under_load``: a collection under load freezes what survived it (the next walks only
    what is newer); a cycle frozen alive that dies later is freed by the idle collection."""
    with _collecting_runtime(tmp_path, 1.0) as rt:
        alive = _Flowish()  # alive during the collection under load: frozen with the survivors
        garbage = weakref.ref(alive)

        def collected() -> list:
            rt.last_request = time.monotonic()  # under load
            return _gc_events(rt, "load")
        assert wait_until(collected, 10), "no collection under load"
        load = _gc_events(rt, "load")[0]
        assert load["frozen"] and load["frozen"] >= 1  # (frozen objects that die leave the count: it moves)
        del alive  # dies while frozen: a cycle, so only a collection of the unfrozen frees it
        gc.collect()
        assert garbage() is not None  # frozen: a full collection does not see it
        # idle now: the idle collection unfreezes first
        assert wait_until(lambda: garbage() is None and _gc_events(rt, "idle"), 10), \
            "the idle collection did not free what died frozen"
        assert _gc_events(rt, "idle")[0]["freed"] >= 1


def test_a_longer_idle_spell_forgets_the_conversations(tmp_path):
    """After ``pipeline.forget_s`` without a request, what the runtime remembers of conversations (their
    messages, the recent bodies' histories) is dropped, so an idle engine's RSS falls back."""
    with _collecting_runtime(tmp_path, 0.2, forget_s=0.5) as rt:
        rt.conversations.get(("anthropic", "t", "s", "a"))
        recent = rt.recent
        facts = rt.memo("validate.facts", FactCache)
        facts.put(b"{}", ("a fact",), 2)
        rt.last_request = time.monotonic()
        assert wait_until(lambda: _gc_events(rt, "forget"), 10), "the conversations were not forgotten"
        assert len(rt.conversations) == 0 and rt.recent is not recent and facts.peek(b"{}") is None
        assert _gc_events(rt, "forget")[0]["conversations"] == 1
