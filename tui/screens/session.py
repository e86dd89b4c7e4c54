"""One session's context versions and pins, with the controls (``v`` on a session): rollback (``r``
says what it costs, ``y`` does it), compact now, pin, unpin. Everything comes from the proxy (event
server command ``session``, :mod:`contextwarden.sessionctl.commands`); nothing is decided here."""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from contextwarden.sessionctl.render import changed, pin_text, what

from .. import format as fmt
from ..host import Host
from ..widgets.synctable import SyncTable

COLUMNS = [("v", "v", 3), ("time", "time", 8), ("what", "what", 16), ("trigger", "trigger", 11),
           ("before", "before", 6), ("after", "after", 6), ("changed", "changed", 34)]  # ("rollback to v14", "compression": whole)


def version_cells(v: dict[str, Any]) -> tuple:
    off = v.get("kind") == "decision" and not v.get("applied", True)
    style = "dim strike" if off else ""
    return (Text(f"v{v['n']}", style="bold" + (" dim" if off else "")),
            Text(time.strftime("%H:%M:%S", time.localtime(v["ts"])) if v.get("ts") else "–", style="dim"),
            Text(what(v), style="yellow" if v.get("kind") == "rollback" else style),
            Text(str(v.get("trigger") or ""), style=style),
            Text(fmt.num(v.get("tokens_before")), justify="right", style=style),
            Text(fmt.num(v.get("tokens_after")), justify="right", style=style),
            Text(changed(v), style=style or "dim"))


class SessionScreen(Screen):
    app: Host  # (for the type checker: the app this screen runs in)
    DEFAULT_CSS = """
    SessionScreen > Vertical > #session-head { height: 2; padding: 0 1; background: $boost; }
    SessionScreen > Vertical > SyncTable { height: 1fr; }
    SessionScreen > Vertical > #session-pins { height: auto; max-height: 4; padding: 0 1; }
    SessionScreen > Vertical > #session-note { height: auto; max-height: 4; padding: 0 1; background: $boost; }
    SessionScreen > Vertical > Input { display: none; }
    SessionScreen > Vertical > Input.shown { display: block; }
    """
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("r", "rollback", "Rollback"),
        Binding("y", "confirm", "Confirm", show=False),
        Binding("k", "compact", "Compact now"),
        Binding("p", "pin", "Pin"),
        Binding("u", "unpin", "Unpin"),
        Binding("g", "reload", "Reload"),
    ]

    def __init__(self, session: str) -> None:
        super().__init__(id="session-view")
        self.session = session
        self.data: dict[str, Any] = {}
        self.pending: dict[str, Any] | None = None  # a rollback previewed, waiting for y

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(id="session-head")
            yield SyncTable(COLUMNS, id="versions-table")
            yield Static(id="session-pins")
            yield Static(id="session-note")
            yield Input(placeholder="pin: a tool_use id, a message index, or a text (enter: pin, escape: cancel)",
                        id="pin-input")
        yield Footer()

    async def on_mount(self) -> None:
        await self.action_reload()
        self.query_one(SyncTable).focus()

    @property
    def table(self) -> SyncTable:
        return self.query_one("#versions-table", SyncTable)

    async def _cmd(self, action: str, **args: Any) -> Any | None:
        return await self.app.command({"cmd": "session", "action": action, "session": self.session, **args})

    async def action_reload(self) -> None:
        out = await self._cmd("show")
        if isinstance(out, dict):
            self.data = out
        self._draw()

    def _draw(self) -> None:
        d = self.data
        head = Text(f"session {fmt.short_id(self.session, 24)}", style="bold")
        if d:
            head.append(f" · {d.get('agent') or ''} · at v{d.get('current', 0)}")
            head.append(f" · {len(d.get('applied') or [])} decisions applied", style="green")
            if d.get("hold"):
                head.append(" · held after rollback", style="yellow")
            if d.get("compact_now"):
                head.append(" · compact now pending", style="bold yellow")
        else:
            head.append(" · no versions (the proxy has no record of it)", style="dim")
        head.append("\nv0 is the client's own history · r rollback · k compact now · p pin · u unpin", style="dim")
        self.query_one("#session-head", Static).update(head)
        rows = [(str(v["n"]), version_cells(v)) for v in reversed(d.get("version_list") or [])]  # newest first
        rows.append(("0", (Text("v0", style="bold"), Text("–", style="dim"), Text("client history"), Text(""), Text(""),
                           Text(""), Text("no decision applied", style="dim"))))
        self.table.sync(rows)
        pins = d.get("pin_list") or []
        self.query_one("#session-pins", Static).update(
            Text("pins: ", style="bold").append(", ".join(pin_text(p) for p in pins) if pins else "none",
                                               style="cyan" if pins else "dim"))

    def _note(self, text: Text | str) -> None:
        self.query_one("#session-note", Static).update(text)

    async def action_rollback(self) -> None:
        key = self.table.highlighted_key()
        if key is None:
            return
        to = int(key)
        out = await self._cmd("rollback", to=to, dry_run=True)
        if not isinstance(out, dict):
            return
        t = Text(f"rollback to v{to}: ", style="bold")
        if out.get("preview"):
            t.append(f"next request {fmt.num(out.get('tokens_before'))} → {fmt.num(out.get('tokens_after'))} tokens "
                     f"(window {fmt.num(out.get('window'))}); re-writes {fmt.num(out.get('rewrite_tokens'))} cached tokens "
                     f"≈ ${out.get('rewrite_usd') or 0:.4f}")
        else:
            t.append(out.get("note") or "")
        if out.get("refused"):
            t.append("\nrefused: " + out["refused"], style="red")
            self.pending = None
        else:
            t.append("\npress y to roll back, any other key to keep", style="yellow")
            self.pending = {"to": to}
        self._note(t)

    async def action_confirm(self) -> None:
        if self.pending is None:
            return
        to = self.pending["to"]
        self.pending = None
        out = await self._cmd("rollback", to=to)
        if isinstance(out, dict) and out.get("applied"):
            self._note(Text(f"rolled back to v{to}: version v{out['version']} (undo: r on v{out['from']})", style="green"))
        elif isinstance(out, dict) and out.get("refused"):
            self._note(Text("refused: " + out["refused"], style="red"))
        await self.action_reload()

    async def _act(self, action: str, done: str, **args: Any) -> None:
        """Send ``action``; once done, say ``done`` and show the session again."""
        if await self._cmd(action, **args) is not None:
            self._note(Text(done, style="green"))
            await self.action_reload()

    async def action_compact(self) -> None:
        await self._act("compact", "the next request of this session compacts and clears")

    def action_pin(self) -> None:
        box = self.query_one("#pin-input", Input)
        box.add_class("shown")
        box.value = ""
        box.focus()

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        event.input.remove_class("shown")
        self.table.focus()
        if value := event.value.strip():
            await self._act("pin", f"pinned {value}", target=value)

    async def action_unpin(self) -> None:
        pins = self.data.get("pin_list") or []
        if not pins:
            self._note(Text("no pin to remove", style="dim"))
            return
        await self._act("unpin", f"unpinned {pin_text(pins[-1])}", target=f"#{pins[-1]['id']}")

    def action_back(self) -> None:
        box = self.query_one("#pin-input", Input)
        if box.has_class("shown"):
            box.remove_class("shown")
            self.table.focus()
            return
        self.app.pop_screen()

    def on_key(self, event) -> None:
        if self.pending is not None and event.key not in ("y", "r"):
            self.pending = None
            self._note(Text("rollback not done", style="dim"))
