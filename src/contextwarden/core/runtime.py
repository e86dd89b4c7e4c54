"""Everything a running proxy holds: settings, data dir, event bus and log, state, plugins."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any

from ..settings import Settings, _deep_merge, load_settings
from ..store import replicas
from ..store.bodies import BodyRing
from ..store.state import open_state
from ..store.statecache import state_cache
from ..util.home import ensure_home, secret_file
from ..util.lru import LRU, forget_shared
from ..wire.history import Conversations
from ..wire.prefixparse import RecentBodies
from ..wire.tokens import TokenCounter
from . import collector
from .boundedpool import BoundedExecutor
from .events import Event, EventBus, JsonlLog
from .pluginmanager import check_stage_names, make_plugin_manager, stage_order
from .stagebudgets import StageTimes


class Runtime:
    def __init__(self, settings: Settings, home: Path, plugins_dir: str | os.PathLike[str] | None = None,
                 profile: str | os.PathLike[str] | None = None, bus: EventBus | None = None,
                 extra_plugins: list[tuple[str, object]] | None = None, log: bool = True) -> None:
        pm = make_plugin_manager(plugins_dir, extra=extra_plugins)
        check_stage_names(pm, settings.pipeline)  # before anything is opened: an unknown stage stops the start
        self.settings = settings
        self.profile = profile
        self.home = ensure_home(home)
        self.bus = bus or EventBus()
        self.log = JsonlLog(self.home / "logs", int(settings.log.events_max_mb * 1e6), settings.log.events_backups) if log else None
        if self.log:
            self.bus.subscribe(self.log)
        self.state = open_state(settings, self.home, self.bus)
        self.replica = replicas.name(settings, self.state)
        if self.replica:
            self.bus.replica = self.replica  # every event says which replica served it
        self.overrides: dict[str, Any] = {}
        # Settings changed at run time with persist=True (from the TUI) come back after a restart.
        persisted = replicas.read(self.state, "overrides")
        if persisted and profile is not None:
            try:
                loaded = load_settings(profile, self.home, overrides=persisted)
                check_stage_names(pm, loaded.pipeline)
                self.settings = settings = loaded
                self.overrides = persisted
            except Exception as e:
                self.bus.emit("error", {"where": "settings", "message": f"saved run-time settings ignored: {e}"})
        self._salt = secret_file(self.home, "tenant.salt")
        self._salt_shared = replicas.share_salt(self)
        self.pm = pm
        # A request is read and its stages run in one trip to the stage pool (Pipeline.admit_and_process);
        # a stage abandoned past its budget keeps its thread until it returns (the breaker lets at most
        # one per stage be), so the pool has room beyond that. The core pool reads what no stage
        # changes (observe-only requests, count_tokens), never behind a hung stage.
        self.stage_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="cw-stage")
        self.core_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="cw-core")
        # bounded: under a load the turn workers cannot follow, the oldest waiting turns are dropped
        self.turn_pool = BoundedExecutor(max(1, settings.pipeline.turn_workers), settings.pipeline.turn_queue,
                                         "cw-turn", on_drop=self._turn_dropped)
        self._turn_drop_emitted = 0.0
        # sessions put into observe-only at run time (the TUI's bypass key)
        stored_bypass = replicas.read(self.state, "bypass")
        self.bypass: set[str] = set(stored_bypass or [])
        self._seen_shared = (persisted, stored_bypass)  # (overrides, bypass) as last read from the store
        self.bodies = BodyRing()
        # what the proxy remembers about each conversation: its messages' bytes, typed messages, per-message
        # results, the stages' slots (history.py)
        self.conversations = Conversations()
        # recent bodies' histories, not decoded again (pipeline.prepare): one per conversation in flight
        self.recent = RecentBodies(max(8, settings.pipeline.recent_conversations))
        self._lock = threading.Lock()
        self._memos: dict[str, Any] = {}  # the request path's caches, by name (memo): this runtime's alone
        # (per-content cache, calibration: saved with the state written soon, not on each turn's clock)
        self.tokens = TokenCounter(settings.tokens, self.state, self.bus, soon=state_cache(self))
        # the stage breaker: stage name -> (its call still running past its budget, when it started)
        self._overrun: dict[str, tuple[Future[Any], float]] = {}
        self.stage_times = StageTimes()  # each stage's recent durations: its adaptive budget
        self._gc_settled_memory = False
        self._gc_unsubscribe: Callable[[], None] | None = None
        self.last_request = time.monotonic()  # prepare() stamps it; the idle collector reads it
        self._gc_idle_thread: threading.Thread | None = None
        self._closed = threading.Event()
        self.pm.hook.cw_configure(runtime=self)
        # Loading a tiktoken encoding takes ~0.5 s: do it now, not inside the first request.
        self.turn_pool.submit(self._warm_tokens)
        if self.state.shared:  # what another replica's TUI changes reaches this one too
            replicas.start_sync(self)

    @property
    def salt(self) -> str:
        """The salt a credential is hashed with into a tenant: with a shared state, the replicas' one
        (until it could be read, every request asks again, failing fast while the server is down)."""
        if not self._salt_shared:
            self._salt_shared = replicas.share_salt(self)
        return self._salt

    def settle_gc(self, reason: str = "startup") -> dict[str, Any] | None:
        """``collector.settle`` (freeze what exists, raise the thresholds; None when ``pipeline.gc_tuning``
        is off); at start-up also again once memory is ready, and the background collections
        (``collector.background``: under load every ``gc_full_s``, when idle after ``gc_idle_s``)."""
        info = collector.settle(self.settings.pipeline, reason)
        if info is None:
            return None
        self.bus.emit("gc", info)
        if reason == "startup" and self._gc_unsubscribe is None and self.settings.memory.enabled:
            self._gc_unsubscribe = self.bus.subscribe(self._settle_gc_when_memory_is_ready)
        p = self.settings.pipeline
        if reason == "startup" and self._gc_idle_thread is None and (p.gc_idle_s > 0 or p.gc_full_s > 0):
            self._gc_idle_thread = threading.Thread(target=collector.background, args=(self,), name="cw-gc-idle",
                                                    daemon=True)
            self._gc_idle_thread.start()
        return info

    def _settle_gc_when_memory_is_ready(self, ev: Event) -> None:
        if getattr(ev, "type", None) == "memory_status" and not self._gc_settled_memory:
            self._gc_settled_memory = True
            with suppress(RuntimeError):  # closed meanwhile
                self.turn_pool.submit(self.settle_gc, "memory ready")

    def _turn_dropped(self, dropped: int, waiting: int) -> None:
        """A ``backpressure`` event at most once a second while turn work is being dropped."""
        now = time.monotonic()
        if now - self._turn_drop_emitted >= 1.0:
            self._turn_drop_emitted = now
            self.bus.emit("backpressure", {"pool": "turn", "dropped": dropped, "waiting": waiting,
                                           "max_pending": self.turn_pool.max_pending})

    def _warm_tokens(self) -> None:
        try:
            self.tokens.count_text("warm-up")
        except Exception as e:
            self.bus.emit("error", {"where": "tokens", "message": f"warm-up failed: {type(e).__name__}: {e}"})

    @classmethod
    def from_profile(cls, profile: str | os.PathLike[str] | None, home: str | os.PathLike[str] | None = None,
                     plugins_dir: str | os.PathLike[str] | None = None, **kw: Any) -> Runtime:
        h = ensure_home(home)
        return cls(load_settings(profile, h), h, plugins_dir, profile=profile, **kw)

    def memo[T](self, name: str, factory: Callable[[], T]) -> T:
        """This runtime's cache ``name`` (``factory()`` the first time): every cache of the request path
        lives here, never in a module, so two runtimes in one process share nothing."""
        m: T | None = self._memos.get(name)
        if m is None:
            with self._lock:
                m = self._memos.get(name)
                if m is None:
                    m = self._memos[name] = factory()
        return m

    def stages(self) -> list[tuple[str, Callable[..., Any]]]:
        p = self.settings.pipeline
        return stage_order(self.pm, p.order, p.disabled)

    def runs(self, stage: str) -> bool:
        """Whether ``stage`` is in the pipeline (registered, in the order, not disabled)."""
        return any(name == stage for name, _ in self.stages())

    def passive(self) -> bool:
        """No request's bytes can change: observe-only, or no stage to run (a bypassed session aside)."""
        return self.settings.proxy.observe_only or not self.stages()

    def apply_overrides(self, overrides: dict[str, Any], persist: bool = False) -> Settings:
        """Change settings at run time (from the TUI): applies to new requests only."""
        merged = _deep_merge(self.overrides, overrides)
        settings = load_settings(self.profile, self.home, overrides=merged)
        check_stage_names(self.pm, settings.pipeline)
        self.settings = settings
        self.overrides = merged
        self.tokens.settings = self.settings.tokens
        if persist or self.state.shared:  # shared: one gateway, one set of settings for every replica
            self.state.put("runtime", "overrides", merged)
        self.bus.emit("settings", {"overrides": merged, "persisted": persist})
        self.pm.hook.cw_configure(runtime=self)
        return self.settings

    def forget_conversations(self) -> None:
        """Drop what is remembered of conversations (their messages' bytes, typed messages, memos and
        slots; the recent bodies' histories), the memos of per-message work (``memo``'s LRUs), the token
        counts and the memos of pure functions (``lru.forget_shared``): caches, each conversation's next
        request reads and counts it whole; the stages' objects kept by settings (strippers,
        taggers: each with its memo) and what the state store remembers of its writes go too. The
        inspector's bodies stay, compressed; the recent events drop their JSON."""
        self.conversations.clear()
        self.bodies.pack()
        self.bus.forget_json()
        self.recent = RecentBodies(self.recent.size)
        self.state.forget()
        self.tokens.forget()
        for m in list(self._memos.values()):
            if isinstance(m, (LRU, dict)):
                m.clear()
        forget_shared()

    # the stage breaker

    def overrun_since(self, stage: str) -> float | None:
        """When the call of ``stage`` that ran past its budget started, if it is still running."""
        rec = self._overrun.get(stage)
        return rec[1] if rec is not None and not rec[0].done() else None

    def mark_overrun(self, stage: str, call: Future[Any], flow_id: str | None = None, session: str | None = None) -> None:
        """``call`` (a concurrent Future running ``stage``, for the request ``flow_id`` of ``session``) was
        abandoned past its budget: skip the stage until it returns, then say so."""
        started = time.time()
        self._overrun[stage] = (call, started)

        def returned(f: Future[Any]) -> None:
            if self._overrun.get(stage, (None, 0.0))[0] is f:  # (not kept: its exception holds the request)
                self._overrun.pop(stage, None)
            e = None if f.cancelled() else f.exception()
            err = "cancelled" if f.cancelled() else f"{type(e).__name__}: {e}" if e is not None else None
            self.bus.emit("stage_recovered", {"stage": stage, "late_ms": round((time.time() - started) * 1000, 3),
                                               "error": err}, flow_id=flow_id, session=session)

        call.add_done_callback(returned)

    def set_bypass(self, session: str, on: bool = True) -> None:
        (self.bypass.add if on else self.bypass.discard)(session)
        if self.state.shared:
            self.bypass = replicas.toggle_bypass(self.state, session, on)
        else:
            self.state.put("runtime", "bypass", sorted(self.bypass))
        self.bus.emit("bypass", {"session": session, "on": on}, session=session)

    def close(self) -> None:
        self._closed.set()
        if self._gc_unsubscribe is not None:
            self._gc_unsubscribe()
        # in-flight turn work finishes first (it hands items to memory, closed next); what still waits
        # after a few seconds is dropped (the ingestion marker did not move: sent again next time)
        self.turn_pool.shutdown(wait=True, cancel_futures=False, timeout=self.settings.pipeline.shutdown_turn_s)
        try:
            self.pm.hook.cw_shutdown(runtime=self)
        finally:
            self.stage_pool.shutdown(wait=False, cancel_futures=True)
            self.core_pool.shutdown(wait=False, cancel_futures=True)
            if self.log:
                self.log.close()
            try:  # the values put to be written soon (the ingestion markers of the last turns)
                state_cache(self).flush()
            finally:
                self.state.close()
