"""One TUI for every replica: two runtimes sharing a real redis-server publish their events to the
Redis stream (addons/eventstream.py), and ``contextwarden tui --redis`` (RedisStreamSource) shows the
requests of both, each row naming the replica that served it, including ones sent while it watches.
The two replicas' sequence numbers collide (both count from 1): the source numbers by stream position."""

from __future__ import annotations

from contextwarden.addons.eventstream import EventPublisher
from contextwarden.core.events import Event
from contextwarden.tui.app import ContextWardenApp
from contextwarden.tui.replicas import RedisStreamSource, stream_seq
from contextwarden.tui.widgets.synctable import SyncTable
from tests.support.redis_server import RedisServer
from tests.support.stages import Harness, settings_overrides
from tests.support.wait import await_until
from tests.tui.events import EventFactory


def publish(replica, factory: EventFactory, session: str) -> None:
    """The events of one request, emitted on the replica's bus (which stamps its name)."""
    h, _ = replica
    for d in factory.request(session):
        d["flow_id"] = f"{h.rt.replica}-{d['flow_id']}"  # (flow ids are UUIDs in a real proxy)
        h.rt.bus.publish(Event.from_dict(d))


def test_stream_positions_are_unique_ordered_sequence_numbers():
    assert stream_seq(b"1700000000000-0") < stream_seq("1700000000000-1") < stream_seq("1700000000001-0")


async def test_one_tui_shows_every_replica(tmp_path):
    with RedisServer(tmp_path) as rs:
        replicas = {}
        for name in ("A", "B"):
            h = Harness(tmp_path / name, overrides=settings_overrides(
                window=100_000, stages=["clearing"], state={"url": rs.url, "prefix": "gw", "replica": name}))
            replicas[name] = (h, EventPublisher(h.rt))
        try:
            factories = {name: EventFactory() for name in replicas}
            publish(replicas["A"], factories["A"], "s-a")
            publish(replicas["B"], factories["B"], "s-b")
            for _, pub in replicas.values():
                assert await await_until(lambda: pub.sent, 10)
            src = RedisStreamSource(rs.url, "gw", block_ms=100)
            app = ContextWardenApp(src, tick=0.05)
            async with app.run_test(size=(80, 24)) as pilot:

                async def rows(n: int) -> SyncTable:
                    def table() -> SyncTable:
                        app.flush()
                        return app.screen.query_one("#requests-table", SyncTable)
                    await await_until(lambda: table().row_count >= n, 15, interval=0.1, pause=pilot.pause)
                    return table()

                await pilot.press("2")
                table = await rows(2)
                cells = sorted(str(table.get_cell(k, "session")) for k in table.keys)
                assert [c[:2] for c in cells] == ["A·", "B·"], cells
                # sent while the TUI watches: arrives live, from the replica that served it
                publish(replicas["B"], factories["B"], "s-c")
                table = await rows(3)
                assert table.row_count == 3
                assert str(table.get_cell(table.keys[0], "session")).startswith("B·")
                assert all(e.get("replica") in ("A", "B") for e in app.store.raw)
        finally:
            for h, pub in replicas.values():
                pub.stop()
                h.close()
