"""The TUI shows what went upstream: no memory on a request whose rewrite was not sent, "freed" never
more than what went in minus what was sent, fill against the session's own window, and exports that
ask before writing into the current directory. Pilot tests at 80x24 (see test_tui_app.py)."""

from __future__ import annotations

import orjson
import pytest

from contextwarden.tui.screens.export import ExportPathScreen
from contextwarden.tui.widgets.synctable import SyncTable
from tests.tui.events import EventFactory, MemorySource
from tests.tui.test_app import SIZE, cell_text, make_app, screen_text, settings_snapshot, settle

pytestmark = pytest.mark.usefixtures("utc")  # times in UTC (tests/tui/conftest.py)



def patched(events: list[dict], type: str, **data) -> list[dict]:
    """The events of one request with ``data`` merged into its event of ``type``."""
    return [{**e, "data": {**e["data"], **data}} if e["type"] == type else e for e in events]


def fell_back(events: list[dict], stage: str, status: str = "timeout", changed: bool = False) -> list[dict]:
    """A request whose ``stage`` ran past its budget: the original (or, ``changed``, only the session's
    earlier decisions) went out."""
    out = []
    for e in events:
        d = e["data"]
        if e["type"] == "stage" and d["stage"] == stage:
            e = {**e, "data": {**d, "status": status, "error": "ran past its 250 ms budget"}}
        elif e["type"] == "forward":
            stages = [{**s, "status": status} if s["stage"] == stage else s for s in d["stages"]]
            e = {**e, "data": {**d, "changed": changed, "stages": stages, "reason": f"stage {stage} {status}",
                               **({} if changed else {"tokens_out": d["tokens_in"]})}}
        out.append(e)
    return out


async def _rows(pilot, app, src, *batches, tab="2") -> SyncTable:
    await src.ready()
    for b in batches:
        src.feed(b)
    await settle(pilot, app)
    await pilot.press(tab)
    await settle(pilot, app)
    return app.screen.query_one("#requests-table" if tab == "2" else "#sessions-table", SyncTable)


async def test_no_mem_on_a_request_whose_rewrite_was_not_sent():
    src = MemorySource(settings_snapshot())
    app = make_app(src)
    f = EventFactory()
    sent = f.request("s-mem", tokens_in=40_000, mem_tokens=700)  # flow-0001: memory went out
    # flow-0002: memory ran past its budget: the original went out
    unchanged = fell_back(f.request("s-mem", tokens_in=41_000, mem_tokens=700), "memory")
    # flow-0003: memory ran past its budget but the session's earlier decisions were re-applied (changed)
    reapplied = fell_back(f.request("s-mem", tokens_in=42_000, tokens_sent=30_000, mem_tokens=700), "memory", changed=True)
    # flow-0004: the abandoned memory call reports after the request went out
    late = f.request("s-mem", tokens_in=43_000, tokens_sent=43_000, mem_tokens=700)
    late_mem = [e for e in late if e["type"] == "memory"]
    late = fell_back([e for e in late if e["type"] != "memory"], "memory")
    # flow-0005: the validator refused the rewrite: the original went out though every stage was ok
    refused = patched(f.request("s-mem", tokens_in=44_000, mem_tokens=700), "forward", changed=False,
                      tokens_out=44_000, reason="invalid rewrite: x")
    async with app.run_test(size=SIZE) as pilot:
        table = await _rows(pilot, app, src, sent, unchanged, reapplied, late, late_mem, refused)
        mem = {k: cell_text(table, k, "mem") for k in table.keys}
        assert mem == {"flow-0001": "700", "flow-0002": "–", "flow-0003": "–", "flow-0004": "–", "flow-0005": "–"}
        assert app.store.sessions["s-mem"].mem_tokens == 700
        assert (app.store.totals.memory_injections, app.store.totals.memory_tokens) == (1, 700)
        await pilot.press("1")
        await settle(pilot, app)
        text = screen_text(app)
        assert "memory injections" in text and "memory injected" in text
        line = next(ln for ln in text.splitlines() if "memory injected" in ln)
        assert line.split()[-1].rstrip("│") == "700"


async def test_freed_never_exceeds_what_went_in_minus_what_was_sent():
    src = MemorySource(settings_snapshot())
    app = make_app(src)
    f = EventFactory()
    # clearing says 20,000 freed, but the request went from 50,000 to 45,700 (memory added 700)
    a = f.request("s-free", tokens_in=50_000, tokens_sent=45_700, mem_tokens=700,
                  clearing={"cleared": ["t1"], "tokens_freed": 20_000, "new": 1})
    # a compaction claimed, then a later stage failed: the original went out, nothing freed
    b = fell_back(f.request("s-free", tokens_in=60_000, tokens_sent=20_000,
                            compaction={"messages": 30, "tokens_before": 60_000, "tokens_after": 20_000}), "memory")
    # a compaction that went out: 60,000 -> 21,000
    c = f.request("s-free", tokens_in=61_000, tokens_sent=21_000,
                  compaction={"messages": 30, "tokens_before": 61_000, "tokens_after": 21_000, "reused": True})
    async with app.run_test(size=SIZE) as pilot:
        table = await _rows(pilot, app, src, a, b, c, tab="3")
        went_in = 50_000 + 60_000 + 61_000
        sent = 45_700 + 60_000 + 21_000
        s = app.store.sessions["s-free"]
        assert s.tokens_freed == 4_300 + 40_000 <= went_in - sent
        assert cell_text(table, "s-free", "freed") == "44.3k"
        assert app.store.totals.tokens_freed == 44_300
        await pilot.press("1")
        await settle(pilot, app)
        line = next(ln for ln in screen_text(app).splitlines() if "freed (clear+compact)" in ln)
        assert "44.3k" in line


async def test_fill_is_measured_against_the_sessions_own_window():
    src = MemorySource(settings_snapshot())  # the settings say 200,000
    app = make_app(src)
    f = EventFactory()
    usage = {"input_tokens": 8_000, "output_tokens": 10, "cache_read_input_tokens": 40_000, "cache_creation_input_tokens": 0}
    small = patched(f.request("s-small", tokens_in=48_000, usage=usage), "request", context_window=64_000)
    plain = f.request("s-plain", tokens_in=48_000, usage=usage)  # an older proxy: no window in the event
    async with app.run_test(size=SIZE) as pilot:
        table = await _rows(pilot, app, src, small, plain, tab="3")
        assert cell_text(table, "s-small", "fill") == "75%"  # 48,000 of 64,000
        assert cell_text(table, "s-plain", "fill") == "24%"  # 48,000 of the settings' 200,000
        await pilot.press("1")
        await settle(pilot, app)
        text = screen_text(app)
        assert "75% 48.0k/64.0k" in text and "24% 48.0k/200.0k" in text
        # the settings change the window: sessions without their own follow it
        src.feed([], settings={**app.store.settings, "tokens": {**app.store.settings["tokens"], "context_window": 96_000}})
        await settle(pilot, app)
        app.redraw({"overview"}, force=True)
        await settle(pilot, app)
        text = screen_text(app)
        assert "75% 48.0k/64.0k" in text and "50% 48.0k/96.0k" in text


async def test_export_asks_before_writing_into_the_current_directory(tmp_path, monkeypatch):
    tmp_path = tmp_path / "cwd"
    tmp_path.mkdir()
    monkeypatch.chdir(tmp_path)
    exported = {"kind": "contextwarden.session", "session": "s-exp", "events": [], "requests": []}
    src = MemorySource(settings_snapshot(), handler=lambda cmd: exported)
    app = make_app(src, None)  # no --export-dir: the current directory
    f = EventFactory()
    async with app.run_test(size=SIZE) as pilot:
        await _rows(pilot, app, src, f.request("s-exp"), tab="3")
        await pilot.press("e")
        await settle(pilot, app)
        assert isinstance(app.screen, ExportPathScreen)
        field = app.screen.query_one("#export-path-input")
        assert field.value.startswith(str(tmp_path / "contextwarden-session-s-exp-")) and field.value.endswith(".json")
        assert list(tmp_path.iterdir()) == []  # nothing written while asking
        await pilot.press("escape")
        await settle(pilot, app)
        assert not isinstance(app.screen, ExportPathScreen) and list(tmp_path.iterdir()) == []
        # again, to a path the user types
        await pilot.press("e")
        await settle(pilot, app)
        target = tmp_path / "exports" / "mine.json"
        app.screen.query_one("#export-path-input").value = str(target)
        await pilot.press("enter")
        await settle(pilot, app)
        assert orjson.loads(target.read_bytes()) == exported
        assert [p.name for p in tmp_path.iterdir()] == ["exports"]
