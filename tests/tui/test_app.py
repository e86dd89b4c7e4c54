"""Pilot tests of the TUI's panels at 80x24, driven by events fed through the client interface
(a MemorySource, the same interface the live client and the log reader implement)."""

from __future__ import annotations

import asyncio
import io
import re
import time

import orjson
import pytest
from rich.console import Console

from contextwarden.settings import Settings, _deep_merge
from contextwarden.tui.app import ContextWardenApp
from contextwarden.tui.screens.inspector import InspectorScreen
from contextwarden.tui.screens.settings import SettingsScreen
from contextwarden.tui.store import Store
from contextwarden.tui.widgets.fillbar import FillBars
from contextwarden.tui.widgets.synctable import SyncTable
from tests.support.wait import await_until
from tests.tui.events import STAGES, EventFactory, MemorySource, demo_snapshot

NOW = 1_700_000_100.0
SIZE = (80, 24)


def screen_text(app) -> str:
    """What the terminal shows, as plain text."""
    w, h = app.size
    console = Console(width=w, height=h, file=io.StringIO(), force_terminal=True, color_system="truecolor",
                      record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


def settings_snapshot(**extra) -> dict:
    """No events yet, the demo's pinned settings, a proxy up for 1:02:05."""
    return {**demo_snapshot(), "events": [], "runtime_started": NOW - 3725, **extra}


async def settle(pilot, app) -> None:
    await pilot.pause()
    app.flush()
    await pilot.pause()


def make_app(source, tmp_path=None, **kw) -> ContextWardenApp:
    return ContextWardenApp(source, clock=lambda: NOW, tick=0.05, export_dir=tmp_path, **kw)


def cell_text(table: SyncTable, key: str, column: str) -> str:
    return str(table.get_cell(key, column))


pytestmark = pytest.mark.usefixtures("utc")


async def test_request_log_newest_first_with_everything_a_row_shows():
    src = MemorySource(settings_snapshot())
    app = make_app(src)
    f = EventFactory()
    async with app.run_test(size=SIZE) as pilot:
        await src.ready()
        src.feed([f.ingest("s-one", 1, ["history", "setup"])])
        src.feed(f.request("s-one", tokens_in=50_000, tokens_sent=30_000, tags=["python", "asyncio"], mem_tokens=700,
                           stage_ms={"budget": 0.2, "tagging": 1.5, "clearing": 2.0, "compaction": 9.5, "memory": 3.0},
                           clearing={"cleared": ["t1"], "tokens_freed": 20_000}, upstream_ms=812, level="REDUCED"))
        src.feed(f.request("s-two", tokens_in=900, tags=["rust"], upstream_ms=95, status=429))
        await settle(pilot, app)
        await pilot.press("2")
        await settle(pilot, app)
        table = app.screen.query_one("#requests-table", SyncTable)
        assert table.row_count == 3
        first, second, third = table.keys
        assert first == "flow-0002" and second == "flow-0001"  # newest first; the history row is oldest
        row = {c: cell_text(table, second, c) for c in ("turn", "session", "tags", "in", "sent", "mem", "stages", "up", "status", "level")}
        assert row == {"turn": "1", "session": "s-one", "tags": "python,asyncio", "in": "50.0k", "sent": "30.0k",
                       "mem": "700", "stages": "16 cp", "up": "812", "status": "200", "level": "RDC"}
        assert cell_text(table, first, "status") == "429"
        assert table.get_cell(first, "status").style == "red"
        # the ingested-history row is dimmed
        hist = table.get_cell(third, "tags")
        assert str(hist) == "history,setup" and "dim" in str(hist.style)
        # the detail line of the highlighted (newest) row, then of the one below: every stage's ms
        await pilot.press("down")
        text = screen_text(app)
        assert "budget 0.2 tagging 1.5 clearing 2.0 compaction 9.5 memory 3.0" in text
        assert "level REDUCED" in text
        assert "python,async" in text and "50.0k" in text
        assert "level REDUCED · python" in text and "pipeline 16 ms · upstream 812 ms · 200 · rewritten" in text


async def test_request_log_is_bounded_and_keeps_following_the_newest():
    src = MemorySource(settings_snapshot())
    app = make_app(src, max_requests=40)
    f = EventFactory()
    async with app.run_test(size=SIZE) as pilot:
        await src.ready()
        await pilot.press("2")
        for _ in range(5):
            src.feed([e for _ in range(30) for e in f.request("s", tokens_in=100, gap=0.01)])
            await settle(pilot, app)
        table = app.screen.query_one("#requests-table", SyncTable)
        assert table.row_count == 40 and len(app.store.requests) == 40
        assert table.keys[0] == "flow-0150" and table.highlighted_key() == "flow-0150"
        # a user looking at an older row keeps it when new rows arrive
        await pilot.press("down", "down")
        assert table.highlighted_key() == "flow-0148"
        src.feed(f.request("s", tokens_in=100))
        await settle(pilot, app)
        assert table.keys[0] == "flow-0151" and table.highlighted_key() == "flow-0148"


async def test_overview_counts_tokens_and_labels_the_estimate():
    src = MemorySource(demo_snapshot())
    app = make_app(src)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        text = screen_text(app)
        t = app.store.totals
        assert (t.requests, t.turns, t.compactions, t.clearings) == (12, 12, 1, 1)
        # the clearing's request also sent a 600-token memory block: it went down by 23,400, not 24,000
        assert t.tokens_freed == (24_000 - 600) + (110_000 - 48_000)
        for needle in ("requests                            12", "compactions                          1",
                       "freed (clear+compact)            85.4k", "saved (estimate)", "billed input", "billed, list price",
                       "Provider usage, reported (12 turns)", "up 0:01:39"):
            assert needle in text, needle
        assert "tests×6" in text  # active tags
        # one fill line per session, thresholds marked
        line = next(line for line in text.splitlines() if line.startswith(" sess-a"))
        assert line.count("│") + line.count("┃") == 2 and "60% 119.6k/200.0k" in line


async def test_overview_without_provider_usage_reports_no_cost():
    src = MemorySource(settings_snapshot())
    app = make_app(src)
    f = EventFactory()
    async with app.run_test(size=SIZE) as pilot:
        await src.ready()
        evs = [e for e in f.request("s", tokens_in=1000) if e["type"] not in ("turn", "response")]
        src.feed(evs)
        await settle(pilot, app)
        text = screen_text(app)
        assert "no provider usage yet" in text and "saved (estimate)" not in text


async def test_overview_names_a_model_without_a_price_and_the_setting_that_prices_it():
    src = MemorySource(settings_snapshot())
    app = make_app(src)
    f = EventFactory()
    async with app.run_test(size=(120, 30)) as pilot:
        await src.ready()
        src.feed(f.request("s", tokens_in=1000, model="claude-opus-5-5"))
        await settle(pilot, app)
        text = screen_text(app)
        assert "(1 turns unpriced)" in text
        assert re.search(r"set prices for +claude-opus-5-5", text), text


async def test_context_events_panel_lists_compaction_and_clearing():
    src = MemorySource(demo_snapshot())
    app = make_app(src)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await pilot.press("4")
        await settle(pilot, app)
        text = screen_text(app)
        assert "compaction  40 msgs → summary, 110,000 → 48,000 tok" in text
        assert "clearing    cleared 3 tool results, −24,000 tok" in text
        lines = text.splitlines()
        assert lines.index(next(x for x in lines if "compaction" in x)) < lines.index(next(x for x in lines if "clearing " in x))


async def test_sessions_fill_bar_and_bypass_key(tmp_path):
    calls = []

    def handler(cmd):
        calls.append(cmd)
        return {"session": cmd["session"], "on": cmd["on"], "bypass": [cmd["session"]] if cmd["on"] else []}

    src = MemorySource(demo_snapshot(), handler=handler)
    app = make_app(src, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await pilot.press("3")
        await settle(pilot, app)
        table = app.screen.query_one("#sessions-table", SyncTable)
        assert table.keys == ["sess-a", "sess-b"]
        text = screen_text(app)
        assert "60%" in text and "soft 70% · hard 85% of 200.0k" in text
        await pilot.press("down", "b")
        await settle(pilot, app)
        assert calls == [{"cmd": "bypass", "session": "sess-b", "on": True}]
        assert str(table.get_cell("sess-b", "mode")) == "observe"
        assert "observe-only (bypassed)" in screen_text(app)
        # the proxy's own bypass event later agrees; pressing again turns it off
        src.feed([{"seq": 9999, "ts": NOW, "type": "bypass", "flow_id": None, "session": "sess-b",
                   "data": {"session": "sess-b", "on": True}}])
        await settle(pilot, app)
        await pilot.press("b")
        await settle(pilot, app)
        assert calls[-1] == {"cmd": "bypass", "session": "sess-b", "on": False}
        assert str(table.get_cell("sess-b", "mode")) == "active"


async def test_export_session_snapshot(tmp_path):
    exported = {"kind": "contextwarden.session", "session": "sess-a", "events": [1, 2], "requests": []}
    src = MemorySource(demo_snapshot(), handler=lambda cmd: exported if cmd["cmd"] == "export" else None)
    app = make_app(src, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await pilot.press("3")
        await settle(pilot, app)
        await pilot.press("e")
        await settle(pilot, app)
    files = list(tmp_path.glob("contextwarden-session-sess-a-*.json"))
    assert len(files) == 1 and orjson.loads(files[0].read_bytes()) == exported
    assert src.commands == [{"cmd": "export", "session": "sess-a"}]


EARLY = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"early turn {i}"} for i in range(6)]
ORIGINAL = {"model": "claude-sonnet-4-5", "max_tokens": 100, "system": "You are helpful.", "messages": [
    *EARLY,
    {"role": "user", "content": "start"},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "a.txt b.txt " * 50}]},
    {"role": "assistant", "content": "done"},
    {"role": "user", "content": "what next?"},
]}
REWRITTEN = {**ORIGINAL, "messages": [
    *EARLY, ORIGINAL["messages"][6], ORIGINAL["messages"][7],
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "[cleared: 600 chars of Bash output]"}]},
    ORIGINAL["messages"][9],
    {"role": "user", "content": [{"type": "text", "text": "what next?"}, {"type": "text", "text": "<memory>earlier: a.txt</memory>"}]},
]}


async def test_inspector_shows_the_diff_and_saves_it_without_credentials(tmp_path):
    def handler(cmd):
        assert cmd == {"cmd": "bodies", "flow_id": "flow-0001"}
        return {"flow_id": "flow-0001", "session": "s", "api": "anthropic", "model": "claude-sonnet-4-5", "path": "/v1/messages",
                "headers": [["x-api-key", "sk-ant-SECRET"], ["authorization", "Bearer SECRET"], ["accept", "*/*"]],
                "original": ORIGINAL, "rewritten": REWRITTEN}

    src = MemorySource(settings_snapshot(), handler=handler)
    app = make_app(src, tmp_path)
    f = EventFactory()
    async with app.run_test(size=SIZE) as pilot:
        await src.ready()
        src.feed(f.request("s", tokens_in=5000, tokens_sent=800))
        await settle(pilot, app)
        await pilot.press("2")
        await settle(pilot, app)
        await pilot.press("enter")
        await settle(pilot, app)
        assert isinstance(app.screen, InspectorScreen)
        text = screen_text(app)
        assert "rewritten: 11 → 11 messages" in text
        assert "~ [tool_result] t1: a.txt b.txt" in text and "~ [tool_result] t1: [cleared: 600" in text
        assert "+ [text] <memory>earlier:" in text
        assert "2–7    · 6 unchanged messages ·" in text and "early turn 3" not in text  # the untouched start is collapsed
        await pilot.press("u")
        assert "early turn 3" in screen_text(app)
        await pilot.press("s")
        await settle(pilot, app)
        saved = tmp_path / "contextwarden-request-flow-0001.json"
        data = orjson.loads(saved.read_bytes())
        assert "SECRET" not in saved.read_text()
        assert ["x-api-key", "[REDACTED:header]"] in data["headers"] and data["rewritten"] == REWRITTEN
        assert [r["kind"] for r in data["diff"]].count("changed") == 2
        await pilot.press("escape")
        assert not isinstance(app.screen, InspectorScreen)
        await pilot.press("i")  # the footer's key for the same
        await settle(pilot, app)
        assert isinstance(app.screen, InspectorScreen) and app.screen.flow_id == "flow-0001"


async def test_inspector_when_bodies_are_gone():
    src = MemorySource(settings_snapshot())  # no handler: the command fails
    app = make_app(src)
    async with app.run_test(size=SIZE) as pilot:
        await src.ready()
        app.inspect("flow-x")
        await settle(pilot, app)
        assert "No bodies for this request" in screen_text(app)


async def test_settings_screen_with_a_stage_disabled_takes_input():
    """The stages a profile disables were kept in the screen's own ``disabled`` (Textual's switch for
    the whole screen): with one disabled, the form took no key."""
    snap = settings_snapshot()
    snap["settings"]["pipeline"]["disabled"] = ["memory"]
    calls = []
    app = make_app(MemorySource(snap, handler=lambda cmd: calls.append(cmd) or {}))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await pilot.press("c")
        await settle(pilot, app)
        screen = app.screen
        assert isinstance(screen, SettingsScreen) and not screen.query_one("#stage-memory").value
        screen.query_one("#stage-memory").focus()
        await pilot.press("space", "ctrl+s")
        await settle(pilot, app)
        assert calls == [{"cmd": "set", "overrides": {"pipeline": {"disabled": []}}, "persist": False}]


async def test_settings_screen_sends_overrides_and_stage_switches():
    calls = []

    current = settings_snapshot()["settings"]

    def handler(cmd):
        calls.append(cmd)
        s = Settings(**_deep_merge(current, cmd["overrides"]))  # what the proxy would validate and apply
        return {"settings": s.model_dump(mode="json"), "overrides": cmd["overrides"], "bypass": [], "stages": STAGES}

    src = MemorySource(settings_snapshot(), handler=handler)
    app = make_app(src)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        await pilot.press("c")
        await settle(pilot, app)
        screen = app.screen
        assert isinstance(screen, SettingsScreen)
        text = screen_text(app)
        assert "compaction soft threshold" in text and "0.7" in text
        soft = screen.query_one("#set-compaction--soft-threshold")
        soft.value = "0.6"
        screen.query_one("#stage-memory").value = False
        await pilot.press("ctrl+s")
        await settle(pilot, app)
        assert calls == [{"cmd": "set", "overrides": {"compaction": {"soft_threshold": 0.6}, "pipeline": {"disabled": ["memory"]}},
                          "persist": False}]
        assert not isinstance(app.screen, SettingsScreen)
        assert app.store.thresholds == (0.6, 0.85)
        # a bad number is refused locally, nothing sent
        await pilot.press("c")
        await settle(pilot, app)
        app.screen.query_one("#set-compaction--hard-threshold").value = "lots"
        await pilot.press("ctrl+s")
        await settle(pilot, app)
        assert len(calls) == 1 and isinstance(app.screen, SettingsScreen)


async def test_bursts_are_coalesced_into_few_redraws():
    src = MemorySource(settings_snapshot())
    app = ContextWardenApp(src, clock=time.time, tick=0.25)
    f = EventFactory()
    async with app.run_test(size=SIZE) as pilot:
        await src.ready()
        await pilot.press("2")
        await pilot.pause(0.3)
        # a burst: 40 batches (400 events) posted at once -> folded in by one or two ticks, not 40 redraws
        r0 = app.redraws
        for i in range(40):
            src.feed(f.request(f"s{i % 7}", tokens_in=100)[:10])
        t0 = app.ticks
        await await_until(lambda: app.ticks >= t0 + 2, 30, pause=pilot.pause)
        assert not app.pending and app.store.events_seen == 400
        assert 1 <= app.redraws - r0 <= 2
        # sustained 200 events/s in the server's 50 ms batches: never more than one redraw per tick
        r0, t0 = app.redraws, app.ticks
        for i in range(40):
            src.feed(f.request(f"s{i % 7}", tokens_in=100)[:10])
            await asyncio.sleep(0.05)  # the pace under test: a batch every 50 ms
        await await_until(lambda: app.store.events_seen == 800 and not app.pending, 30, pause=pilot.pause)
        assert app.store.events_seen == 800 and not app.pending
        # (how many ticks the 40 batches spanned depends on the machine's load: a bound on the tick count
        # would be a wall-clock bound; what must hold is at most one redraw per tick, and per batch)
        assert 0 < app.redraws - r0 <= min(app.ticks - t0, 40)


async def test_a_second_passing_redraws_the_uptime_and_not_the_overviews_tables_and_bars(monkeypatch):
    """Left open for hours, the overview is redrawn once a second for its clock: only the uptime then;
    an event still redraws the rest."""
    now = [NOW]
    src = MemorySource(settings_snapshot())
    app = ContextWardenApp(src, clock=lambda: now[0], tick=3600)
    f = EventFactory()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        src.feed(f.request("s1", tokens_in=1200))
        await settle(pilot, app)
        shown = []
        monkeypatch.setattr(FillBars, "show", lambda self, *a: shown.append(a))
        for _ in range(3):
            now[0] += 1
            app.flush()
            await pilot.pause()
        assert "1:02:08" in screen_text(app) and shown == []  # (up 1:02:05 at the snapshot)
        src.feed(f.request("s2", tokens_in=900))
        await settle(pilot, app)
        assert len(shown) == 1


async def test_connection_states_show_in_the_status_line():
    from contextwarden.tui.messages import ConnectionChanged

    src = MemorySource(settings_snapshot())
    app = make_app(src)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        assert "● connected" in screen_text(app)
        app.post_message(ConnectionChanged("waiting", "no running proxy found"))
        await settle(pilot, app)
        assert "◌ waiting no running proxy found" in screen_text(app)


def test_events_panel_lists_what_changed_a_request_and_counts_each_compaction_once():
    f, store = EventFactory(), Store()
    evs = [f.startup(), f.ev("request", {"api": "anthropic"}, "f1", "s1"),
           f.ev("strip", {"messages": 9, "cleaned": 0, "patterns": {}, "rewritten": 0}, "f1", "s1"),
           f.ev("compaction", {"applied": False, "reason": "below the soft threshold", "tokens_before": 9000}, "f1", "s1"),
           f.ev("request", {"api": "anthropic"}, "f2", "s1"),
           f.ev("strip", {"messages": 11, "cleaned": 2, "patterns": {"channel_header": 2}, "rewritten": 0}, "f2", "s1"),
           f.ev("compaction", {"applied": True, "messages": 7, "tokens_before": 40000, "tokens_after": 30000,
                               "summary_tokens": 400, "reused": False}, "f2", "s1"),
           f.ev("request", {"api": "anthropic"}, "f3", "s1"),
           f.ev("compaction", {"applied": True, "messages": 7, "tokens_before": 44000, "tokens_after": 34000,
                               "summary_tokens": 400, "reused": True}, "f3", "s1")]
    evs += [f.ev("clearing", {"cleared": 3, "new": 3, "tokens_freed": 9000}, "f2", "s1"),
            f.ev("clearing", {"cleared": 3, "new": 0, "tokens_freed": 9000}, "f3", "s1")]
    store.apply(evs)
    lines = [c.summary for c in store.context if c.type not in ("startup", "clearing")]
    assert [c.summary for c in store.context if c.type == "clearing"] == [
        "cleared 3 tool results (3 new), −9,000 tok", "cleared 3 tool results (re-applied), −9,000 tok"]
    assert store.totals.clearings == 1
    assert lines == ["stripped envelopes from 2 of 11 messages (channel_header×2)",
                     "7 msgs → summary, 40,000 → 30,000 tok (−10,000), summary 400 tok",
                     "7 msgs → summary, 44,000 → 34,000 tok (−10,000), summary 400 tok, reused prefix"]
    assert store.totals.compactions == 1
    assert not store.requests["f1"].compacted and store.requests["f3"].compacted
