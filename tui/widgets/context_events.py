"""Compaction, clearing, budget, error and control events, newest first."""

from __future__ import annotations

from rich.text import Text

from .. import format as fmt
from ..store import ContextEvent, Store
from .synctable import TablePanel

COLUMNS = [("time", "time", 8), ("session", "session", 8), ("type", "event", 10), ("what", "what", 80)]
TYPE_STYLE = {"compaction": "magenta", "clearing": "blue", "error": "bold red", "budget": "yellow",
              "bypass": "yellow", "settings": "cyan", "startup": "green", "shutdown": "red", "strip": "dim"}


def event_cells(e: ContextEvent) -> tuple:
    return (Text(fmt.clock(e.ts), style="dim"), Text(fmt.short_id(e.session)),
            Text(e.type, style=TYPE_STYLE.get(e.type, "")), Text(e.summary, no_wrap=True, overflow="ellipsis"))


class ContextEvents(TablePanel[ContextEvent]):
    DEFAULT_CSS = """
    ContextEvents > SyncTable { height: 1fr; }
    """
    COLUMNS = COLUMNS
    STRETCH = ("what", 30, 1 << 20)  # the description ends on screen (cut with …)
    TABLE_ID = "events-table"

    def refresh_from(self, store: Store) -> None:
        self.show([(str(e.uid), e, event_cells(e)) for e in reversed(store.context)])
