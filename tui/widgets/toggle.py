"""A one-row on/off switch that reads as text too (``[ on ]`` / ``[off ]``), for compact forms."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget


class Toggle(Widget, can_focus=True):
    DEFAULT_CSS = """
    Toggle { width: 6; height: 1; }
    Toggle:focus { background: $accent 40%; }
    """
    BINDINGS = [Binding("space,enter", "flip", "Toggle", show=False)]

    value: reactive[bool] = reactive(False)

    class Changed(Message):
        def __init__(self, toggle: Toggle, value: bool) -> None:
            super().__init__()
            self.toggle = toggle
            self.value = value

    def __init__(self, value: bool = False, **kw) -> None:
        super().__init__(**kw)
        self.set_reactive(Toggle.value, value)

    def render(self) -> Text:
        return Text("[ on ]", style="bold green") if self.value else Text("[off ]", style="dim")

    def watch_value(self, value: bool) -> None:
        self.post_message(self.Changed(self, value))

    def action_flip(self) -> None:
        self.value = not self.value

    def on_click(self) -> None:
        self.action_flip()
