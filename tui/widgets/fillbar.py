"""How full a session's context is, against the window, with the compaction thresholds marked."""

from __future__ import annotations

from collections.abc import Callable
from itertools import groupby

from rich.text import Text
from textual.widget import Widget

from .. import format as fmt
from ..store import SessionInfo


def bar(width: int, tokens: int | None, window: int, soft: float, hard: float) -> Text:
    """``width`` cells: filled part coloured by zone, ``┃`` marks at the soft and hard thresholds."""
    width = max(4, width)
    fill = 0.0 if not tokens or window <= 0 else min(1.0, tokens / window)
    filled = round(fill * width)
    soft_at = min(width - 1, int(soft * width))
    hard_at = min(width - 1, int(hard * width))
    cells = []
    for i in range(width):
        zone = "green" if i < soft_at else ("yellow" if i < hard_at else "red")
        if i in (soft_at, hard_at):
            cells.append(("┃" if i < filled else "│", f"bold {'yellow' if i == soft_at else 'red'}"))
        elif i < filled:
            cells.append(("█", zone))
        else:
            cells.append(("░", "bright_black"))
    t = Text()
    for (char, style), run in groupby(cells):  # a span per run, not per cell: redrawn every second
        t.append(char * len(list(run)), style=style)
    return t


def session_line(width: int, s: SessionInfo, window: int, soft: float, hard: float, label: int = 8) -> Text:
    """``abcd1234 ████░░│░░│░ 62% 124k/200k`` (``~`` before the figures when counted, not measured)."""
    tokens, measured = s.fill_tokens()
    fig = f"{'' if measured else '~'}{fmt.pct(tokens / window) if tokens and window else '–'} {fmt.num(tokens)}/{fmt.num(window)}"
    name = fmt.short_id(s.id, label).ljust(label)
    flag = "⏸" if s.bypass else " "
    bar_w = max(4, width - len(name) - len(fig) - 4)
    t = Text()
    t.append(name, style="bold")
    t.append(flag + " ")
    t.append_text(bar(bar_w, tokens, window, soft, hard))
    t.append(" " + fig)
    return t


class FillBars(Widget):
    """One fill line per session (the most recent first)."""

    DEFAULT_CSS = """
    FillBars { height: auto; }
    """

    _lines: list[tuple[SessionInfo, int, float, float]] = []

    def show(self, sessions: list[SessionInfo], window: Callable[[SessionInfo], int], soft: float, hard: float) -> None:
        """``window``: a session's window (``Store.window_of``)."""
        self._lines = [(s, window(s), soft, hard) for s in sessions]
        self.styles.height = max(1, len(self._lines))
        self.refresh()

    def render(self) -> Text:
        width = self.size.width or 76
        if not self._lines:
            return Text("no sessions yet", style="dim")
        return Text("\n").join(session_line(width, *x) for x in self._lines)
