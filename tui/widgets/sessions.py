"""The Sessions list, with the highlighted session's context fill, active tags and mode."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Static

from .. import format as fmt
from ..store import SessionInfo, Store
from .fillbar import session_line
from .synctable import TablePanel

COLUMNS = [("session", "session", 10), ("req", "req", 4), ("fill", "fill", 5), ("ctx", "context", 7),
           ("freed", "freed", 6), ("cmp", "cmp", 3), ("clr", "clr", 3), ("mode", "mode", 8), ("last", "last", 8),
           ("model", "model", 18)]


def session_cells(s: SessionInfo, window: int) -> tuple:
    tokens, measured = s.fill_tokens()
    fill = tokens / window if tokens and window else None
    level = (s.level or "NORMAL").upper()
    if s.bypass:
        mode = Text("observe", style="bold yellow")
    elif level != "NORMAL":
        mode = Text(level[:8], style="bold red" if level == "BLOCKED" else "yellow")
    else:
        mode = Text("active", style="green")
    return (
        Text(fmt.short_id(s.id, 10), style="bold"),
        Text(str(s.requests), justify="right"),
        Text(("" if measured else "~") + fmt.pct(fill), justify="right"),
        Text(fmt.num(tokens), justify="right"),
        Text(fmt.num(s.tokens_freed) if s.tokens_freed else "–", justify="right"),
        Text(str(s.compactions), justify="right"),
        Text(str(s.clearings), justify="right"),
        mode,
        Text(fmt.clock(s.last_ts), style="dim"),
        Text(s.model or "–", style="dim"),
    )


class SessionsPanel(TablePanel[SessionInfo]):
    DEFAULT_CSS = """
    SessionsPanel > SyncTable { height: 1fr; }
    SessionsPanel > #session-detail { height: 4; padding: 0 1; background: $boost; }
    """
    COLUMNS = COLUMNS
    TABLE_ID = "sessions-table"
    _store: Store | None = None

    def compose(self) -> ComposeResult:
        yield from super().compose()
        yield Static(id="session-detail")

    def refresh_from(self, store: Store) -> None:
        self._store = store
        self.show([(s.id, s, session_cells(s, store.window_of(s))) for s in store.recent_sessions()])

    def show_detail(self) -> None:
        s, store = self.selected(), self._store
        w = self.query_one("#session-detail", Static)
        if s is None or store is None:
            w.update(Text("no session selected · b: bypass (observe-only) · e: export snapshot", style="dim"))
            return
        soft, hard = store.thresholds
        width = max(30, (w.size.width or 78) - 2)
        window = store.window_of(s)
        t = session_line(width, s, window, soft, hard, label=10)
        t.append("\n")
        t.append(f"{s.id}", style="bold")
        t.append(" · observe-only (bypassed)" if s.bypass else " · active", style="yellow" if s.bypass else "green")
        t.append(f" · {s.turns} turns · memory {fmt.num(s.mem_tokens)} tok")
        tags = s.active_tags()
        line = Text("\nactive tags: ")
        line.append(" ".join(f"{tag}×{n}" if n > 1 else tag for tag, n in tags) or "none", style="cyan" if tags else "dim")
        line.truncate(width + 1, overflow="ellipsis")
        t.append_text(line)
        t.append(f"\nsoft {soft:.0%} · hard {hard:.0%} of {fmt.num(window)} · v: versions · b: bypass · e: export", style="dim")
        w.update(t)
