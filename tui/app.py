"""The contextwarden TUI: watch the proxy's traffic and steer it.

Events arrive from a :mod:`~contextwarden.tui.client` source as messages and are queued; a timer
folds the queue into the :class:`~contextwarden.tui.store.Store` a few times a second and refreshes
only the visible panel, so a burst of hundreds of events per second costs one redraw per tick.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from contextwarden.util.home import write_private

from .client import CommandError, Source
from .host import Host
from .messages import ConnectionChanged, EventsDropped, EventsReceived, SnapshotReceived
from .screens.export import ExportPathScreen
from .screens.inspector import InspectorScreen
from .screens.main import MainScreen
from .screens.session import SessionScreen
from .screens.settings import SettingsScreen
from .store import Store


class ContextWardenApp(Host):
    CSS_PATH = "app.tcss"
    TITLE = "contextwarden"
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, source: Source, *, export_dir: Path | str | None = None, clock: Callable[[], float] = time.time,
                 tick: float = 0.25, max_requests: int = 500) -> None:
        super().__init__()
        # a dashboard redrawn several times a second gains nothing from animated tabs and scrolling
        self.animation_level = "none"
        self.source = source
        # exports go where the user said (--export-dir); into the current directory only once confirmed
        self.export_dir_chosen = export_dir is not None
        self.export_dir = Path(export_dir) if export_dir else Path.cwd()
        self.clock = clock
        self.tick = tick
        self.store = Store(max_requests=max_requests)
        # batches waiting for the next tick; bounded: if the UI stalls, the oldest are dropped
        self.pending: deque[tuple[list[dict], dict]] = deque(maxlen=5000)
        self.connection_state = "connecting"
        self.connection_detail = source.description
        self.last_command_error: str | None = None
        self.ticks = 0
        self.redraws = 0
        self._last_second = -1

    def get_default_screen(self) -> MainScreen:
        return MainScreen()

    @property
    def main(self) -> MainScreen | None:
        """The default screen (under any inspector or settings screen); None while starting or closing."""
        stack = self.screen_stack
        return stack[0] if stack and isinstance(stack[0], MainScreen) else None

    def redraw(self, dirty: set[str], force: bool = False) -> None:
        if (main := self.main) is not None:
            main.refresh_panels(dirty, force=force)

    def selected_session(self, what: str) -> str | None:
        """The session the user points at; None, and a warning saying there is no session ``what``, if none."""
        session = self.main.selected_session() if self.main is not None else None
        if session is None:
            self.notify(f"no session {what}yet", severity="warning")
        return session

    def on_mount(self) -> None:
        self.run_worker(self.source.run(self.post_message), name="source", group="source", exclusive=True)
        self.set_interval(self.tick, self.flush)

    # -- from the source ---------------------------------------------------------------------------

    def on_snapshot_received(self, message: SnapshotReceived) -> None:
        self.pending.clear()
        self.redraw(self.store.load_snapshot(message.snapshot), force=True)

    def on_events_received(self, message: EventsReceived) -> None:
        self.pending.append((message.events, message.extra))

    def on_events_dropped(self, message: EventsDropped) -> None:
        self.flush()  # batches queued before the notice come first
        self.store.dropped_events(message.count, message.totals)

    def on_connection_changed(self, message: ConnectionChanged) -> None:
        before = self.connection_state
        self.connection_state, self.connection_detail = message.state, message.detail
        if before == "connected" and message.state != "connected":
            self.notify(f"proxy connection lost: {message.detail}", severity="warning", timeout=4)
        elif message.state == "refused":
            self.notify(f"the proxy refused the connection: {message.detail}", severity="error", timeout=6)
        self.redraw({"status"})

    def flush(self) -> None:
        """Fold every queued batch into the store, then redraw what changed (once)."""
        self.ticks += 1
        dirty: set[str] = set()
        while self.pending:
            events, extra = self.pending.popleft()
            if extra and self.store.apply_settings(extra):
                dirty |= {"settings", "sessions"}
            dirty |= self.store.apply(events)
        second = int(self.clock())
        if second != self._last_second:
            self._last_second = second
            dirty.add("clock")
        if dirty:
            self.redraws += 1
            self.redraw(dirty)

    # -- commands ----------------------------------------------------------------------------------

    async def command(self, cmd: dict[str, Any], quiet: bool = False) -> Any | None:
        """Send a command to the proxy; on failure notify (unless ``quiet``) and return None."""
        try:
            self.last_command_error = None
            return await self.source.command(cmd)
        except CommandError as e:
            self.last_command_error = str(e)
            if not quiet:
                self.notify(f"{cmd.get('cmd')}: {e}", severity="error", timeout=5)
            return None

    async def apply_settings(self, overrides: dict[str, Any], persist: bool) -> bool:
        result = await self.command({"cmd": "set", "overrides": overrides, "persist": persist})
        if result is None:
            return False
        if isinstance(result, dict):
            self.store.apply_settings(result)
        where = " and saved in the proxy's runtime state" if persist else " (not saved: until the proxy restarts)"
        self.notify(f"settings applied to new requests{where}")
        self.redraw({"settings", "overview", "sessions"}, force=True)
        return True

    async def action_bypass(self) -> None:
        session = self.selected_session("to bypass ")
        if session is None:
            return
        on = session not in self.store.bypass
        result = await self.command({"cmd": "bypass", "session": session, "on": on})
        if result is None:
            return
        self.store.apply_settings({"bypass": result.get("bypass", [])} if isinstance(result, dict) else {})
        self.notify(f"session {session[:12]}: {'observe-only (bypassed)' if on else 'active again'}")
        self.redraw({"sessions", "requests"}, force=True)

    async def action_export(self) -> None:
        session = self.selected_session("to export ")
        if session is None:
            return
        snap = await self.command({"cmd": "export", "session": session}, quiet=True) if self.source.live else None
        if snap is None:  # offline, an older proxy, or a source without commands: what the TUI holds
            snap = self.store.session_export(session)
        self.save_export(f"contextwarden-session-{_safe(session)}-{time.strftime('%Y%m%d-%H%M%S')}.json", snap,
                         "session snapshot", "exported")

    def save_export(self, name: str, payload: Any, what: str, done: str) -> None:
        """Write ``payload`` as JSON to the export folder; when that is the current directory (no
        --export-dir), only after the user confirms or edits the path."""
        def write(path: Path | None) -> None:
            if path is None:
                self.notify(f"{what} not written", severity="warning")
                return
            try:
                written = self.write_export(path, payload)
            except OSError as e:
                self.notify(f"{what} not written: {e}", severity="error", timeout=6)
                return
            self.notify(f"{done} {written}")

        path = self.export_dir / name
        if self.export_dir_chosen:
            write(path)
        else:
            self.push_screen(ExportPathScreen(path, what), write)

    @staticmethod
    def write_export(path: Path, payload: Any) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(path, orjson.dumps(payload, option=orjson.OPT_INDENT_2, default=str))  # 0600: a session's bodies
        return path

    def action_settings(self) -> None:
        if not self.source.live:
            self.notify("offline log: settings can only be changed on a live proxy", severity="warning")
            return
        self.push_screen(SettingsScreen(self.store.settings, self.store.available_stages or self.store.stages))

    def action_session_view(self) -> None:
        """The highlighted session's context versions and pins (rollback, compact now, pin)."""
        session = self.selected_session("")
        if session is not None:
            self.push_screen(SessionScreen(session))

    def inspect(self, flow_id: str) -> None:
        row = self.store.requests.get(flow_id)
        summary = f"{row.model or ''} session {row.session}" if row else ""
        self.push_screen(InspectorScreen(flow_id, summary))


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)[:48]
