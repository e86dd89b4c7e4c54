"""What a replica sharing one state (``state.url`` on Redis) does differently: its name in events, the
shared tenant salt, and run-time settings and bypass set on another replica."""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

from .state import StateUnavailable


def name(settings, state) -> str | None:
    """This proxy's name among replicas: ``state.replica``, else host:pid when the state is shared
    (None for a lone proxy: its events need no name)."""
    if settings.state.replica:
        return settings.state.replica
    if getattr(state, "shared", False):
        return f"{socket.gethostname()}:{os.getpid()}"
    return None


def read(state, key: str) -> Any:
    """A run-time record (``overrides``, ``bypass``); None when a shared server is down at start-up
    (the sync thread picks it up when it is back)."""
    try:
        return state.get("runtime", key)
    except StateUnavailable:
        return None


def share_salt(rt) -> bool:
    """Replicas must hash a credential to the same tenant (session keys, memory collections): the
    first replica's salt is stored and every other one takes it. True when done (or not shared); False
    while the server is down."""
    if not rt.state.shared:
        return True
    local = rt._salt
    try:
        rt._salt = rt.state.update("_meta", "tenant_salt", lambda cur: cur or local)
        return True
    except StateUnavailable:
        return False


def start_sync(rt) -> None:
    """Apply the run-time settings and bypass another replica stored, every ``state.sync_s``."""
    threading.Thread(target=_sync, args=(rt,), name="cw-state-sync", daemon=True).start()


def _sync(rt) -> None:
    while not rt._closed.wait(max(0.1, rt.settings.state.sync_s)):
        try:
            over = rt.state.get("runtime", "overrides")
            bypass = rt.state.get("runtime", "bypass")
        except Exception:
            continue  # down: the store reported it; keep what this replica has
        last, rt._seen_shared = rt._seen_shared, (over, bypass)  # only changes are applied
        if bypass != last[1]:
            rt.bypass = set(bypass or [])
        if over != last[0] and over != rt.overrides and rt.profile is not None:
            try:
                rt.overrides = {}
                rt.apply_overrides(over or {}, persist=False)
            except Exception as e:
                rt.bus.emit("error", {"where": "settings", "message": f"shared run-time settings ignored: {e}"})


def toggle_bypass(state, session: str, on: bool) -> set[str]:
    """Bypass set atomically in the shared state (another replica may have bypassed others meanwhile)."""
    return set(state.update("runtime", "bypass", lambda cur: sorted(
        (set(cur or []) | {session}) if on else (set(cur or []) - {session}))))
