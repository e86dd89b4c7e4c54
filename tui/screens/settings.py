"""Change thresholds and stage switches at run time. Changes go to the proxy (new requests only);
the profile file is never written. "Save" also stores them in the proxy's runtime state
(``Runtime.apply_overrides(persist=True)``: ``state.sqlite`` under cw_home)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Button, Footer, Input, Label, Static

from ..host import Host
from ..store import get_path
from ..widgets.toggle import Toggle

# (dotted path, label, type)
FIELDS: list[tuple[str, str, type]] = [
    ("compaction.soft_threshold", "compaction soft threshold (share of window)", float),
    ("compaction.hard_threshold", "compaction hard threshold (share of window)", float),
    ("compaction.target", "compaction target (share of window)", float),
    ("compaction.protect_recent_turns", "recent user turns never compacted", int),
    ("clearing.trigger_tokens", "clear tool results above (tokens)", int),
    ("clearing.keep_recent", "tool results always kept", int),
    ("clearing.clear_at_least", "clear at least (tokens)", int),
    ("memory.budget_fraction", "memory budget (share of window)", float),
    ("memory.top_k", "memory items per request", int),
    ("tokens.context_window", "context window (tokens)", int),
    ("pipeline.stage_budget_ms", "time budget per stage (ms)", float),
]
SWITCHES: list[tuple[str, str]] = [
    ("proxy.observe_only", "observe only: no stage runs, every byte passes"),
    ("memory.inject", "inject memory into requests"),
]
DEFAULT_STAGES = ["budget", "strip", "tagging", "clearing", "compaction", "memory"]


def set_path(d: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        d = d.setdefault(part, {})
    d[parts[-1]] = value


def _field(label: str, widget: Widget) -> Horizontal:
    return Horizontal(Label(label), widget, classes="field")


def _wid(path: str) -> str:
    return "set-" + path.replace(".", "--").replace("_", "-")


class SettingsScreen(Screen):
    app: Host  # (for the type checker: the app this screen runs in)
    CSS_PATH = "settings.tcss"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Cancel"),
        Binding("ctrl+s", "apply", "Apply"),
    ]

    def __init__(self, settings: dict[str, Any] | None, stages: list[str]) -> None:
        super().__init__(id="settings")
        self.settings = settings or {}
        order = list(get_path(self.settings, "pipeline.order", []) or [])
        self.stage_names = list(dict.fromkeys([*order, *stages])) or list(DEFAULT_STAGES)
        self.disabled_stages = set(get_path(self.settings, "pipeline.disabled", []) or [])

    def compose(self) -> ComposeResult:
        head = Text("Settings ", style="bold")
        head.append("applied to new requests; the profile file is never changed", style="dim")
        if not self.settings:
            head = Text("Settings unknown: connect to a live proxy to change them", style="yellow")
        yield Static(head, id="settings-head")
        with VerticalScroll(id="settings-form"):
            for path, label, typ in FIELDS:
                value = get_path(self.settings, path)
                yield _field(label, Input(value="" if value is None else str(value), id=_wid(path), compact=True,
                                          type="integer" if typ is int else "number"))
            yield Label("Stages", classes="section")
            for name in self.stage_names:
                yield _field(f"stage {name}", Toggle(value=name not in self.disabled_stages, id="stage-" + name.replace("_", "-")))
            yield Label("Modes", classes="section")
            for path, label in SWITCHES:
                yield _field(label, Toggle(value=bool(get_path(self.settings, path, False)), id=_wid(path)))
            yield _field("save in runtime state (cw_home), not the profile", Toggle(value=False, id="persist"))
        with Horizontal(id="settings-buttons"):
            yield Button("Apply", id="apply", variant="primary", compact=True)
            yield Button("Cancel", id="cancel", compact=True)
        yield Footer()

    def overrides(self) -> dict[str, Any]:
        """What differs from the proxy's current settings. Raises ValueError on a bad number."""
        out: dict[str, Any] = {}
        for path, label, typ in FIELDS:
            raw = self.query_one("#" + _wid(path), Input).value.strip()
            if raw == "":
                continue
            try:
                value = typ(raw)
            except ValueError:
                raise ValueError(f"{label}: {raw!r} is not a number") from None
            if value != get_path(self.settings, path):
                set_path(out, path, value)
        for path, _label in SWITCHES:
            value = self.query_one("#" + _wid(path), Toggle).value
            if value != bool(get_path(self.settings, path, False)):
                set_path(out, path, value)
        disabled = [n for n in self.stage_names if not self.query_one("#stage-" + n.replace("_", "-"), Toggle).value]
        disabled += [n for n in self.disabled_stages if n not in self.stage_names]
        if set(disabled) != self.disabled_stages:
            set_path(out, "pipeline.disabled", disabled)
        return out

    async def action_apply(self) -> None:
        try:
            overrides = self.overrides()
        except ValueError as e:
            self.app.notify(str(e), severity="error")
            return
        if not overrides:
            self.app.notify("nothing changed")
            self.app.pop_screen()
            return
        if await self.app.apply_settings(overrides, self.query_one("#persist", Toggle).value):
            self.app.pop_screen()

    async def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "apply":
            await self.action_apply()
        else:
            self.app.pop_screen()
