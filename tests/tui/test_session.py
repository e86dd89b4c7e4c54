"""The TUI's session view (``v``): versions and pins from the proxy's ``session`` command, and the keys
for rollback (previewed, then confirmed with ``y``), compact now, pin and unpin. Pilot tests at 80x24
and a snapshot."""

from __future__ import annotations

import copy

import pytest

from contextwarden.tui.screens.session import SessionScreen
from contextwarden.tui.widgets.synctable import SyncTable
from tests.tui.events import MemorySource, demo_snapshot
from tests.tui.test_app import NOW, SIZE, make_app, screen_text, settle
from tests.tui.test_snapshots import loaded

pytestmark = pytest.mark.usefixtures("utc")  # times in UTC (tests/tui/conftest.py)

VERSIONS = [
    {"n": 1, "kind": "decision", "stage": "clearing", "trigger": "tokens", "ts": NOW - 300, "tokens_before": 52_000,
     "tokens_after": 31_000, "messages": [3, 5, 7], "tool_ids": ["toolu_01", "toolu_02", "toolu_03"], "refs": ["toolu_01"]},
    {"n": 2, "kind": "decision", "stage": "compaction", "trigger": "hard", "ts": NOW - 120, "tokens_before": 61_000,
     "tokens_after": 24_000, "span": [0, 39], "tool_ids": ["toolu_04"], "refs": ["h1"]},
]


class FakeProxy:
    """Answers the ``session`` command as sessionctl.commands does, for one session."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.versions = copy.deepcopy(VERSIONS)
        self.applied = {1, 2}
        self.pins: list[dict] = [{"id": 1, "kind": "tool", "value": "toolu_02", "ts": NOW}]
        self.compact_now = False

    def show(self) -> dict:
        return {"key": "t|sess-a|main", "session": "sess-a", "agent": "main", "current": self.versions[-1]["n"],
                "applied": sorted(self.applied), "hold": any(v["kind"] == "rollback" for v in self.versions),
                "compact_now": self.compact_now, "pins": len(self.pins), "window": 64_000,
                "version_list": [{**v, "applied": v["n"] in self.applied} if v["kind"] == "decision" else v
                                 for v in self.versions], "pin_list": list(self.pins)}

    def __call__(self, cmd: dict):
        assert cmd["cmd"] == "session" and cmd["session"] == "sess-a", cmd
        self.calls.append(cmd)
        a = cmd["action"]
        if a == "show":
            return self.show()
        if a == "rollback":
            out = {"key": "t|sess-a|main", "to": cmd["to"], "from": self.versions[-1]["n"], "window": 64_000, "preview": True,
                   "tokens_before": 24_000, "tokens_after": 61_000, "fits": True, "rewrite_tokens": 50_000,
                   "rewrite_usd": 0.1875, "model": "claude-sonnet-4-5"}
            if cmd.get("dry_run"):
                return {**out, "applied": False}
            n = self.versions[-1]["n"] + 1
            self.versions.append({"n": n, "kind": "rollback", "stage": "session", "to": cmd["to"], "ts": NOW,
                                  "trigger": "user", "tokens_before": 24_000, "tokens_after": 61_000})
            self.applied = {v for v in self.applied if v <= cmd["to"]}
            return {**out, "applied": True, "version": n}
        if a == "compact":
            self.compact_now = True
            return {"key": "t|sess-a|main", "compact_now": True}
        if a == "pin":
            self.pins.append({"id": len(self.pins) + 1, "kind": "text", "value": cmd["target"], "ts": NOW})
            return {"pins": self.pins}
        if a == "unpin":
            self.pins = [p for p in self.pins if f"#{p['id']}" != cmd["target"]]
            return {"pins": self.pins}
        raise AssertionError(cmd)


async def open_view(pilot, app) -> SessionScreen:
    await settle(pilot, app)
    await pilot.press("3")
    await settle(pilot, app)
    await pilot.press("v")
    await settle(pilot, app)
    assert isinstance(app.screen, SessionScreen)
    return app.screen


async def test_the_session_view_lists_versions_newest_first_and_pins(tmp_path):
    proxy = FakeProxy()
    app = make_app(MemorySource(demo_snapshot(), handler=proxy), tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        view = await open_view(pilot, app)
        assert view.session == "sess-a"
        table = view.query_one("#versions-table", SyncTable)
        assert table.keys == ["2", "1", "0"]
        text = screen_text(app)
        assert "compaction" in text and "clearing" in text and "messages 0–39" in text
        assert "pins: #1 tool:toolu_02" in text
        assert "at v2" in text and "2 decisions applied" in text


async def test_rollback_key_previews_the_cost_and_y_does_it(tmp_path):
    proxy = FakeProxy()
    app = make_app(MemorySource(demo_snapshot(), handler=proxy), tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        view = await open_view(pilot, app)
        await pilot.press("down")  # v1
        await pilot.press("r")
        await settle(pilot, app)
        assert proxy.calls[-1] == {"cmd": "session", "action": "rollback", "session": "sess-a", "to": 1, "dry_run": True}
        text = screen_text(app)
        assert "rollback to v1" in text and "$0.1875" in text and "press y" in text
        assert [v["n"] for v in proxy.versions] == [1, 2]  # nothing done yet
        await pilot.press("y")
        await settle(pilot, app)
        assert proxy.calls[-2] == {"cmd": "session", "action": "rollback", "session": "sess-a", "to": 1}
        assert view.query_one("#versions-table", SyncTable).keys == ["3", "2", "1", "0"]
        text = screen_text(app)
        assert "rollback to v1" in text and "held after rollback" in text and "rolled back to v1" in text


async def test_a_previewed_rollback_is_dropped_by_any_other_key(tmp_path):
    proxy = FakeProxy()
    app = make_app(MemorySource(demo_snapshot(), handler=proxy), tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        view = await open_view(pilot, app)
        await pilot.press("r")
        await settle(pilot, app)
        await pilot.press("down", "y")
        await settle(pilot, app)
        assert not any(c["action"] == "rollback" and not c.get("dry_run") for c in proxy.calls)
        assert view.pending is None


async def test_compact_now_pin_and_unpin_keys(tmp_path):
    proxy = FakeProxy()
    app = make_app(MemorySource(demo_snapshot(), handler=proxy), tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await open_view(pilot, app)
        await pilot.press("k")
        await settle(pilot, app)
        assert proxy.calls[-2]["action"] == "compact" and "compact now pending" in screen_text(app)
        await pilot.press("p")
        await settle(pilot, app)
        await pilot.press(*"def main", "enter")
        await settle(pilot, app)
        assert {"cmd": "session", "action": "pin", "session": "sess-a", "target": "def main"} in proxy.calls
        assert "#2 text:def main" in screen_text(app)
        await pilot.press("u")
        await settle(pilot, app)
        assert {"cmd": "session", "action": "unpin", "session": "sess-a", "target": "#2"} in proxy.calls
        text = screen_text(app)
        assert [ln.strip() for ln in text.splitlines() if ln.strip().startswith("pins:")] == ["pins: #1 tool:toolu_02"]
        assert "unpinned #2 text:def main" in text
        await pilot.press("escape")
        await settle(pilot, app)
        assert not isinstance(app.screen, SessionScreen)


def test_session_view_80x24(snap_compare):
    from contextwarden.tui.app import ContextWardenApp

    def clocked():
        return ContextWardenApp(MemorySource(demo_snapshot(), handler=FakeProxy()), clock=lambda: NOW, tick=3600)

    assert snap_compare(clocked(), press=["3", "v"], terminal_size=(80, 24), run_before=loaded)


async def test_session_controls_show_in_the_events_panel(tmp_path):
    src = MemorySource(demo_snapshot(), handler=FakeProxy())
    app = make_app(src, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        src.feed([{"seq": 9001, "ts": NOW, "type": "session", "flow_id": None, "session": "sess-a",
                   "data": {"action": "rollback", "key": "t|sess-a|main", "to": 1, "version": 3}},
                  {"seq": 9002, "ts": NOW, "type": "session", "flow_id": None, "session": "sess-a",
                   "data": {"action": "pin", "key": "t|sess-a|main", "target": {"kind": "tool", "value": "toolu_02"}}}])
        await settle(pilot, app)
        await pilot.press("4")
        await settle(pilot, app)
        text = screen_text(app)
        assert "rolled back to v1 (version v3)" in text and "pinned tool:toolu_02" in text
