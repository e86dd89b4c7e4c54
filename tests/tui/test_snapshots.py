"""Snapshot tests of every screen at a fixed terminal size, with deterministic data and a frozen clock.

Update after an intended change: ``.venv/bin/pytest tests/tui/test_snapshots.py --snapshot-update``,
then look at the SVGs under tests/tui/__snapshots__/test_snapshots/.
"""

from __future__ import annotations

import pytest

from contextwarden.tui.app import ContextWardenApp
from tests.tui.events import MemorySource, demo_snapshot
from tests.tui.test_app import ORIGINAL, REWRITTEN

NOW = 1_700_000_100.0  # the demo's proxy started 100 s earlier


pytestmark = pytest.mark.usefixtures("utc")


def bodies(cmd):
    if cmd["cmd"] == "bodies":
        return {"flow_id": cmd["flow_id"], "session": "sess-a", "api": "anthropic", "model": "claude-sonnet-4-5",
                "path": "/v1/messages", "headers": [["x-api-key", "[REDACTED:header]"]], "original": ORIGINAL, "rewritten": REWRITTEN}
    raise AssertionError(cmd)


def app(bypass=None) -> ContextWardenApp:
    return ContextWardenApp(MemorySource(demo_snapshot(bypass=bypass), handler=bodies), clock=lambda: NOW, tick=3600)


async def loaded(pilot) -> None:
    await pilot.pause()
    pilot.app.flush()
    await pilot.pause()


def test_overview_80x24(snap_compare):
    assert snap_compare(app(), terminal_size=(80, 24), run_before=loaded)


def test_requests_80x24(snap_compare):
    assert snap_compare(app(), press=["2", "down"], terminal_size=(80, 24), run_before=loaded)


def test_requests_100x30(snap_compare):
    assert snap_compare(app(), press=["2"], terminal_size=(100, 30), run_before=loaded)


def test_sessions_80x24(snap_compare):
    assert snap_compare(app(bypass=["sess-b"]), press=["3"], terminal_size=(80, 24), run_before=loaded)


def test_events_80x24(snap_compare):
    assert snap_compare(app(), press=["4"], terminal_size=(80, 24), run_before=loaded)


def test_inspector_80x24(snap_compare):
    async def open_inspector(pilot):
        await loaded(pilot)
        await pilot.press("2", "enter")
        await pilot.pause(0.1)

    assert snap_compare(app(), terminal_size=(80, 24), run_before=open_inspector)


def test_settings_80x24(snap_compare):
    assert snap_compare(app(), press=["c"], terminal_size=(80, 24), run_before=loaded)
