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
            Text(e.type, style=TYPE_STYLE.get(e.type, "")), Text(e.summary, no_wrap=True, overflow="ellipsis"))


class ContextEvents(Vertical):
    DEFAULT_CSS = """
    ContextEvents > SyncTable { height: 1fr; }
    """

    def compose(self) -> ComposeResult:
        yield SyncTable(COLUMNS, id="events-table")

    _rows: list[ContextEvent] = []

    def refresh_from(self, store: Store) -> None:
        self._rows = list(reversed(store.context))
        self._sync()

    def _sync(self) -> None:
        self.query_one(SyncTable).sync([(str(e.uid), event_cells(e)) for e in self._rows])

    def on_resize(self) -> None:
        """The description takes what the fixed columns leave, so it ends on screen (cut with …)."""
        fixed = sum(w + 2 for k, _, w in COLUMNS if k != "what") + 2 + 1
        if self.query_one(SyncTable).set_width("what", max(30, self.size.width - fixed)):
            self._sync()
