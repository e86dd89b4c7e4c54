"""The TUI counts the compression stage's work beside clearing and compaction: the Overview's traffic
has the tool outputs compressed at first sight, its tokens the tokens that took out of them (counted
once: re-applied compressions are not new), and the Events panel lists each compression."""

from __future__ import annotations

from contextwarden.addons.eventserver import Totals
from tests.tui.events import EventFactory, MemorySource
from tests.tui.test_app import SIZE, make_app, screen_text, settings_snapshot, settle


def compression(f: EventFactory, fid: str, new: int, saved: int, reapplied: int = 0) -> dict:
    return f.ev("compression", {"compressed": new, "reapplied": reapplied, "tokens_before": saved + 900 * (new + reapplied),
                                "tokens_after": 900 * (new + reapplied), "tokens_saved": saved, "tools": ["Bash"],
                                "kinds": ["log"], "ids": [f"m-{i:016x}" for i in range(new)], "kept": new}, fid, "sess-c")


def test_totals_count_new_compressions_and_their_tokens_once():
    f = EventFactory()
    t = Totals()
    for ev in (compression(f, "flow-1", 2, 41_000), compression(f, "flow-2", 0, 0, reapplied=2),
               compression(f, "flow-3", 1, 9_500)):
        t.add(ev)
    assert (t.compressions, t.compression_saved) == (3, 50_500)
    # carried over to a TUI that connects late, like every other counter
    assert Totals.from_dict(t.to_dict()).compressions == 3


async def test_overview_and_events_show_compressions():
    f = EventFactory(t0=1_700_000_050.0)
    events = f.request("sess-c", tokens_in=60_000) + [compression(f, "flow-0001", 2, 41_000)]
    events += f.request("sess-c", tokens_in=20_000) + [compression(f, "flow-0002", 0, 0, reapplied=2)]
    app = make_app(MemorySource(settings_snapshot(events=events)))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        text = screen_text(app)
        assert (app.store.totals.compressions, app.store.totals.compression_saved) == (2, 41_000)
        line = next(x for x in text.splitlines() if "compressions" in x)
        assert line.split("compressions", 1)[1].split()[0] == "2", line
        line = next(x for x in text.splitlines() if "saved by compression" in x)
        assert "41.0k" in line, line
        await pilot.press("4")  # the Events panel
        await settle(pilot, app)
        text = screen_text(app)
        assert "compressed 2 tool outputs (Bash), −41,000 tok" in text
        assert "re-applied 2 compressed tool outputs (Bash)" in text
