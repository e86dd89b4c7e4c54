"""The one-line bar at the top: connection, profile, uptime, counts."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from .. import format as fmt

STATE_STYLE = {"connected": ("●", "green"), "offline": ("◆", "cyan"), "connecting": ("◌", "yellow"),
               "waiting": ("◌", "yellow"), "disconnected": ("○", "red"), "refused": ("✖", "red")}


class StatusBar(Static):
    DEFAULT_CSS = """
    StatusBar { height: 1; background: $panel; color: $text; padding: 0 1; }
    """

    def show(self, state: str, detail: str, profile: str | None, uptime: float | None, requests: int,
             dropped: int = 0) -> None:
        mark, colour = STATE_STYLE.get(state, ("?", "white"))
        t = Text()
        t.append("contextwarden ", style="bold")
        t.append(f"{mark} {state}", style=f"bold {colour}")
        if detail:
            t.append(f" {detail}", style="dim")
        if profile:
            t.append(f" · {profile}")
        if uptime is not None:
            t.append(f" · up {fmt.duration(uptime)}")
        t.append(f" · {requests} req")
        if dropped:
            t.append(f" · {dropped} dropped", style="yellow")
        t.truncate(max(10, (self.size.width or 80) - 2), overflow="ellipsis")
        self.update(t)
