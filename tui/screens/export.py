"""Where an export goes: asked before anything is written into the directory the TUI was started in."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label


class ExportPathScreen(ModalScreen[Path | None]):
    """The file to write, prefilled; Enter or Save writes there, Escape or Cancel writes nothing."""

    DEFAULT_CSS = """
    ExportPathScreen { align: center middle; }
    ExportPathScreen > Vertical { width: 76; height: auto; padding: 1 2; border: round $accent; background: $surface; }
    ExportPathScreen Input { margin: 1 0; }
    ExportPathScreen Horizontal { height: auto; align-horizontal: right; }
    ExportPathScreen Button { margin-left: 2; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, path: Path, what: str) -> None:
        super().__init__(id="export-path")
        self.path = Path(path)
        self.what = what

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(Text.assemble(("Write the " + self.what + " to", "bold"),
                                      (" (the folder the TUI was started in; --export-dir chooses another):", "dim")))
            yield Input(value=str(self.path), id="export-path-input")
            with Horizontal():
                yield Button("Cancel", id="export-cancel")
                yield Button("Save", variant="primary", id="export-save")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def _save(self) -> None:
        value = self.query_one(Input).value.strip()
        self.dismiss(Path(value).expanduser() if value else None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "export-save":
            self._save()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
