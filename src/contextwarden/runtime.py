"""Everything a running proxy holds: settings, data dir, event bus and log, state, plugins."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .bodies import BodyRing, record
from .events import EventBus, JsonlLog
from .home import ensure_home, secret_file
from .pluginmanager import make_plugin_manager, stage_order
from .settings import Settings, load_settings
from .state import StateStore


class Runtime:
    def __init__(self, settings: Settings, home: Path, plugins_dir: str | os.PathLike | None = None,
                 profile: str | os.PathLike | None = None, bus: EventBus | None = None,
                 extra_plugins: list[tuple[str, object]] | None = None, log: bool = True) -> None:
        self.settings = settings
        self.profile = profile
        self.home = ensure_home(home)
        self.bus = bus or EventBus()
        self.log = JsonlLog(self.home / "logs", int(settings.log.events_max_mb * 1e6), settings.log.events_backups) if log else None
        if self.log:
            self.bus.subscribe(self.log)
        self.state = StateStore(self.home / "state.sqlite")
        self.overrides: dict[str, Any] = {}
        # Settings changed at run time with persist=True (from the TUI) come back after a restart.
        persisted = self.state.get("runtime", "overrides")
        if persisted and profile is not None:
            try:
                self.settings = settings = load_settings(profile, self.home, overrides=persisted)
                self.overrides = persisted
            except Exception as e:
                self.bus.emit("error", {"where": "settings", "message": f"saved run-time settings ignored: {e}"})
        self.salt = secret_file(self.home, "tenant.salt")
        self.pm = make_plugin_manager(plugins_dir, extra=extra_plugins)
        # Stages get their own pool: a stage abandoned past its budget keeps its thread until it
        # returns, and must not delay the parsing and validation every request needs (core_pool).
        self.stage_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="cw-stage")
        self.core_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="cw-core")
        self.turn_pool = ThreadPoolExecutor(max_workers=max(1, settings.pipeline.turn_workers), thread_name_prefix="cw-turn")
        # sessions put into observe-only at run time (the TUI's bypass key)
        self.bypass: set[str] = set(self.state.get("runtime", "bypass", []))
        self.bodies = BodyRing()
        self._tokens = None
        self._lock = threading.Lock()
        self.pm.hook.cw_configure(runtime=self)
        # Loading a tiktoken encoding takes ~0.5 s: do it now, not inside the first request.
        self.turn_pool.submit(self._warm_tokens)

    def _warm_tokens(self) -> None:
        try:
            self.tokens.count_text("warm-up")
        except Exception as e:
            self.bus.emit("error", {"where": "tokens", "message": f"warm-up failed: {type(e).__name__}: {e}"})

    @classmethod
    def from_profile(cls, profile: str | os.PathLike | None, home: str | os.PathLike | None = None,
                     plugins_dir: str | os.PathLike | None = None, **kw) -> "Runtime":
        h = ensure_home(home)
        return cls(load_settings(profile, h), h, plugins_dir, profile=profile, **kw)

    @property
    def tokens(self):
        """The shared token counter (per-content cache, calibration), created on first use."""
        if self._tokens is None:
            with self._lock:
                if self._tokens is None:
                    from .tokens import TokenCounter

                    self._tokens = TokenCounter(self.settings.tokens, self.state, self.bus)
        return self._tokens

    def stages(self) -> list[tuple[str, object]]:
        p = self.settings.pipeline
        return stage_order(self.pm, p.order, p.disabled)

    def apply_overrides(self, overrides: dict[str, Any], persist: bool = False) -> Settings:
        """Change settings at run time (from the TUI): applies to new requests only."""
        from .settings import _deep_merge

        merged = _deep_merge(self.overrides, overrides)
        self.settings = load_settings(self.profile, self.home, overrides=merged)
        self.overrides = merged
        if self._tokens is not None:
            self._tokens.settings = self.settings.tokens
        if persist:
            self.state.put("runtime", "overrides", merged)
        self.bus.emit("settings", {"overrides": merged, "persisted": persist})
        self.pm.hook.cw_configure(runtime=self)
        return self.settings

    def remember(self, ctx, rewritten: dict | None, nbytes: int) -> None:
        """Keep a request's bodies for the inspector; write them to disk if the profile asks."""
        entry = {"flow_id": ctx.flow_id, "session": ctx.session, "ts": time.time(), "api": ctx.api.value,
                 "path": ctx.path, "model": ctx.model, "headers": ctx.headers, "original": ctx.original,
                 "rewritten": rewritten}
        self.bodies.put(ctx.flow_id, entry, nbytes * (2 if rewritten is not None else 1))
        if self.settings.log.record_bodies:
            self.turn_pool.submit(record, self.home, entry)

    def set_bypass(self, session: str, on: bool = True) -> None:
        (self.bypass.add if on else self.bypass.discard)(session)
        self.state.put("runtime", "bypass", sorted(self.bypass))
        self.bus.emit("bypass", {"session": session, "on": on}, session=session)

    def close(self) -> None:
        try:
            self.pm.hook.cw_shutdown(runtime=self)
        finally:
            self.stage_pool.shutdown(wait=False, cancel_futures=True)
            self.core_pool.shutdown(wait=False, cancel_futures=True)
            self.turn_pool.shutdown(wait=True, cancel_futures=False)
            if self.log:
                self.log.close()
            self.state.close()
