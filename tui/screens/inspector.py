"""The request inspector: original and rewritten body side by side, by message and block."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from contextwarden.util.scrub import scrub_headers

from ..diff import BodyDiff, DiffRow, diff_bodies
from ..host import Host

STATE_STYLE = {"same": "", "changed": "yellow", "removed": "red", "added": "green"}
SIDE_STYLE = {("changed", "left"): "red", ("changed", "right"): "green"}


def _side(blocks, side: str, dim: bool) -> Text:
    t = Text()
    for i, b in enumerate(blocks):
        if i:
            t.append("\n")
        style = SIDE_STYLE.get((b.state, side), STATE_STYLE.get(b.state, ""))
        if dim and b.state == "same":
            style = "dim"
        mark = {"removed": "− ", "added": "+ ", "changed": "~ "}.get(b.state, "  ")
        t.append(mark, style=style)
        t.append(f"[{b.kind}] ", style=f"bold {style}".strip())
        t.append(b.text, style=style)
    return t


def diff_table(diff: BodyDiff) -> Table:
    table = Table(expand=True, show_lines=True, box=None, padding=(0, 1), show_header=True, header_style="bold")
    table.add_column("#", no_wrap=True, width=5, style="dim")
    table.add_column("original", ratio=1, overflow="fold")
    table.add_column("rewritten", ratio=1, overflow="fold")
    for row in diff.rows:
        table.add_row(*_cells(row))
    if not diff.rows:
        table.add_row("", Text("(no messages)", style="dim"), "")
    return table


def _cells(row: DiffRow) -> tuple:
    if row.kind == "same" and not row.left:
        note = Text(f"· {row.count} unchanged message{'s' if row.count != 1 else ''} ·", style="dim italic")
        return (Text(row.label, style="dim"), note, note.copy())
    if row.kind == "field":
        return (Text(row.label[:5], style="bold magenta"), _side(row.left, "left", False), _side(row.right, "right", False))
    label_style = STATE_STYLE.get(row.kind) or "dim"
    return (Text(row.label.split(" ")[0], style=label_style) + Text("\n" + " ".join(row.label.split(" ")[1:])[:5], style="dim"),
            _side(row.left, "left", row.kind == "same"), _side(row.right, "right", row.kind == "same"))


class InspectorScreen(Screen):
    app: Host  # (for the type checker: the app this screen runs in)
    CSS_PATH = "inspector.tcss"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("s", "save", "Save JSON"),
        Binding("u", "flip('show_unchanged')", "Unchanged"),
        Binding("f", "flip('full')", "Full text"),
    ]

    def __init__(self, flow_id: str, summary: str = "") -> None:
        super().__init__(id="inspector")
        self.flow_id = flow_id
        self.summary = summary
        self.entry: dict[str, Any] | None = None
        self.error: str | None = None
        self.show_unchanged = False
        self.full = False
        self.diff: BodyDiff | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text(f"request {self.flow_id}", style="bold"), id="insp-header")
        with VerticalScroll(id="insp-scroll"):
            yield Static(Text("loading bodies…", style="dim"), id="insp-diff")
        yield Footer()

    async def on_mount(self) -> None:
        entry = await self.app.command({"cmd": "bodies", "flow_id": self.flow_id}, quiet=True)
        if isinstance(entry, dict):
            entry["headers"] = scrub_headers(entry.get("headers"))
            self.entry = entry
        else:
            self.error = self.app.last_command_error or "bodies not available"
        self.render_diff()

    def render_diff(self) -> None:
        header = self.query_one("#insp-header", Static)
        body = self.query_one("#insp-diff", Static)
        if self.entry is None:
            header.update(Text(f"request {self.flow_id} · {self.summary}"))
            body.update(Text(f"No bodies for this request: {self.error}", style="yellow"))
            return
        e = self.entry
        self.diff = diff_bodies(e.get("original"), e.get("rewritten"), limit=4000 if self.full else 240,
                                context=None if self.show_unchanged else 1)
        d = self.diff
        t = Text()
        t.append(f"{self.flow_id[:12]} ", style="bold")
        t.append(f"{e.get('api', '?')} {e.get('model') or ''} {e.get('path') or ''} · session {e.get('session')}\n")
        if e.get("rewritten") is None:
            t.append("forwarded unchanged", style="green")
        else:
            t.append(f"rewritten: {d.messages_before} → {d.messages_after} messages", style="yellow")
        t.append(" · s: save JSON · u: unchanged · f: full text · esc: back", style="dim")
        header.update(t)
        body.update(diff_table(d))

    def action_flip(self, option: str) -> None:
        """Show unchanged messages, or whole texts, or not (``option``: the attribute)."""
        setattr(self, option, not getattr(self, option))
        self.render_diff()

    def save_payload(self) -> dict[str, Any]:
        e = self.entry or {}  # (its headers scrubbed as it came: on_mount)
        d = self.diff or diff_bodies(e.get("original"), e.get("rewritten"))
        return {"kind": "contextwarden.request", "version": 1, "flow_id": self.flow_id, **{k: v for k, v in e.items() if k != "flow_id"},
                "diff": [{"kind": r.kind, "label": r.label, "count": r.count,
                          "original": [b.__dict__ for b in r.left], "rewritten": [b.__dict__ for b in r.right]} for r in d.rows]}

    def action_save(self) -> None:
        if self.entry is None:
            self.app.notify("nothing to save: the bodies are not available", severity="warning")
            return
        self.app.save_export(f"contextwarden-request-{self.flow_id[:12]}.json", self.save_payload(), "request", "saved")
