"""Owns contextwarden's options and its runtime (settings, plugins, events, state)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions

from contextwarden.core import collector, flowrelease
from contextwarden.core.pluginmanager import order_warnings
from contextwarden.core.runtime import Runtime
from contextwarden.settings import SettingsError
from contextwarden.util.home import default_home
from contextwarden.util.sealing import SealError

log = logging.getLogger(__name__)


class Warden:
    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        self._key: tuple[str, str, str] | None = None
        self._refused = False  # the last configure refused its options: the next one is mitmproxy's rollback

    def load(self, loader: Any) -> None:
        loader.add_option("cw_profile", str, "default",
                          "contextwarden profile: a name from profiles/ (observe-only, claude-code, openai, ollama) or a YAML path.")
        loader.add_option("cw_home", str, "",
                          "contextwarden data directory (logs, state, memory). Default: $CONTEXTWARDEN_HOME, else the user data dir.")
        loader.add_option("cw_plugins", str, "",
                          "A folder of drop-in contextwarden plugin files (*.py).")

    def configure(self, updated: set[str]) -> None:
        if not updated & {"cw_profile", "cw_home", "cw_plugins", "cw_engine"}:
            return
        if self._refused:  # mitmproxy puts the previous values back: what runs stays (at start-up, nothing:
            self._refused = False  # not the default profile's runtime logged as a normal start before the error)
            return
        o: Any = ctx.options
        if "cw_engine" in o and o.cw_engine:  # the engine process runs the runtime (addons/enginelink.py)
            self.done()
            self._key = None
            return
        key = (o.cw_profile, o.cw_home, o.cw_plugins)
        if key == self._key and self.runtime is not None:
            return
        home = Path(o.cw_home).expanduser() if o.cw_home else default_home()
        if o.cw_plugins and not Path(o.cw_plugins).expanduser().is_dir():
            raise exceptions.OptionsError(f"cw_plugins: not a folder: {o.cw_plugins}")  # type: ignore[no-untyped-call]
        try:
            runtime = Runtime.from_profile(o.cw_profile, home, o.cw_plugins or None)
        except (SettingsError, SealError) as e:  # (a wrong or missing encryption key: say which)
            self._refused = True
            raise exceptions.OptionsError(str(e)) from None  # type: ignore[no-untyped-call]
        old, self.runtime, self._key = self.runtime, runtime, key
        if old is not None:
            old.close()
        # The profile's tokenizer is loaded before the proxy listens: loading one holds the GIL for 0.4-0.9 s,
        # which on the first request would stall what the process streams at the time. The other family's
        # (o200k_base for an OpenAI model under an Anthropic profile) waits for its first request: 0.9 s of
        # CPU and 69 MB that a proxy for one client never needs.
        try:
            runtime.tokens.source_for(None)
        except Exception as e:  # counting falls back to an estimate; never stop the proxy for it
            log.warning(f"contextwarden: tokenizer preload failed: {e}")
        stages = ", ".join(n for n, _ in runtime.stages()) or "none"
        mode = "observe-only" if runtime.settings.proxy.observe_only else "active"
        log.info(f"contextwarden: profile {runtime.settings.name} ({mode}), stages: {stages}, home: {runtime.home}")
        for w in order_warnings(runtime.pm, runtime.settings.pipeline):
            log.warning(f"contextwarden: warning: {w}")
        runtime.bus.emit("startup", {"profile": runtime.settings.name, "mode": mode, "home": str(runtime.home),
                                     "stages": [n for n, _ in runtime.stages()]})
        # warm now: what is loaded stays out of the garbage collector's way (p99 pauses); again when
        # the memory service has loaded its model
        try:
            if runtime.settings.pipeline.release_flows:
                flowrelease.install()  # (the engine's mirrors too: their bodies no longer wait for a collection)
            collector.tune_malloc(runtime.settings.pipeline)
            runtime.settle_gc("startup")
        except Exception as e:  # tuning must never stop the proxy
            log.warning(f"contextwarden: gc tuning failed: {e}")

    def done(self) -> None:
        if self.runtime is not None:
            self.runtime.bus.emit("shutdown", {})
            self.runtime.close()
            self.runtime = None
