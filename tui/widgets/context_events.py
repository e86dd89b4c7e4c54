"""Compaction, clearing, budget, error and control events, newest first."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical

from .. import format as fmt
from ..store import ContextEvent, Store
from .synctable import SyncTable

COLUMNS = [("time", "time", 8), ("session", "session", 8), ("type", "event", 10), ("what", "what", 80)]
TYPE_STYLE = {"compaction": "magenta", "clearing": "blue", "error": "bold red", "budget": "yellow",
              "bypass": "yellow", "settings": "cyan", "startup": "green", "shutdown": "red", "strip": "dim"}


def event_cells(e: ContextEvent) -> tuple:
    return (Text(fmt.clock(e.ts), style="dim"), Text(fmt.short_id(e.session)),
            Text(e.type, style=TYPE_STYLE.get(e.type, "")), Text(e.summary))


class ContextEvents(Vertical):
    DEFAULT_CSS = """
    ContextEvents > SyncTable { height: 1fr; }
    """

    def compose(self) -> ComposeResult:
        yield SyncTable(COLUMNS, id="events-table")

    def refresh_from(self, store: Store) -> None:
        rows = list(reversed(store.context))
        self.query_one(SyncTable).sync([(str(e.uid), event_cells(e)) for e in rows])
