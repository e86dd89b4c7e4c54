"""The main screen: status line, four tabs (Overview, Requests, Sessions, Events), key footer."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import DataTable, Footer, TabbedContent, TabPane

from ..host import Host
from ..store import SessionInfo, Store
from ..widgets.context_events import ContextEvents
from ..widgets.overview import Overview
from ..widgets.request_log import RequestLog
from ..widgets.sessions import SessionsPanel
from ..widgets.status import StatusBar

# which panels a kind of change touches
PANELS = {"overview": ("overview", "status", "clock"), "requests": ("requests",), "sessions": ("sessions", "settings"),
          "events": ("events",)}
# the panel of each tab but the overview (which also shows the time)
TABLES: dict[str, type[RequestLog | SessionsPanel | ContextEvents]] = {
    "requests": RequestLog, "sessions": SessionsPanel, "events": ContextEvents}


class MainScreen(Screen):
    app: Host  # (for the type checker: the app this screen runs in)
    BINDINGS = [
        Binding("1", "show_tab('overview')", "Overview", show=False),
        Binding("2", "show_tab('requests')", "Requests", show=False),
        Binding("3", "show_tab('sessions')", "Sessions", show=False),
        Binding("4", "show_tab('events')", "Events", show=False),
        Binding("i", "inspect", "Inspect"),
        Binding("v", "app.session_view", "Versions", show=False),  # (named in the Sessions tab)
        Binding("b", "app.bypass", "Bypass"),
        Binding("e", "app.export", "Export"),
        Binding("c", "app.settings", "Settings"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self) -> None:
        super().__init__(id="main")
        self._stale: set[str] = set(PANELS)
        self._ready = False

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        with TabbedContent(initial="overview", id="tabs"):
            with TabPane("1 Overview", id="overview"):
                yield Overview(id="overview-panel")
            with TabPane("2 Requests", id="requests"):
                yield RequestLog(id="request-log")
            with TabPane("3 Sessions", id="sessions"):
                yield SessionsPanel(id="sessions-panel")
            with TabPane("4 Events", id="events"):
                yield ContextEvents(id="events-panel")
        yield Footer()

    def on_mount(self) -> None:
        self._ready = True
        self.refresh_panels(set(), force=True)

    @property
    def active_tab(self) -> str:
        return self.query_one(TabbedContent).active or "overview"

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self.refresh_panels(set(), force=True)
        tables = event.pane.query(DataTable)
        if tables:  # arrow keys move through the rows at once
            tables.first().focus()

    def refresh_panels(self, dirty: set[str], force: bool = False) -> None:
        """Update the status line and the visible panel; the hidden ones only when they are shown."""
        app = self.app
        store: Store = app.store
        now = app.clock()
        # only the time moved: the overview's uptime, not its tables and bars (once a second, for hours)
        clock_only = not force and dirty == {"clock"} and "overview" not in self._stale
        self._stale |= {panel for panel, kinds in PANELS.items() if dirty & set(kinds)}
        if not self._ready or not self.is_attached:  # not composed yet (on_mount draws all), or closing
            return
        try:
            status = self.query_one(StatusBar)
        except NoMatches:
            return
        status.show(app.connection_state, app.connection_detail, store.profile, store.uptime(now), store.totals.requests,
                    store.dropped)
        tab = self.active_tab
        if tab not in self._stale and not force:
            return
        self._stale.discard(tab)
        if tab == "overview":
            self.query_one(Overview).refresh_from(store, now, clock_only=clock_only)
        else:
            self.query_one(TABLES[tab]).refresh_from(store)

    def selected_session(self) -> str | None:
        """The session the user points at: the highlighted session or request, else the latest one."""
        tab = self.active_tab
        if tab == "sessions":
            s: SessionInfo | None = self.query_one(SessionsPanel).selected()
            if s is not None:
                return s.id
        elif tab == "requests":
            r = self.query_one(RequestLog).selected()
            if r is not None and r.session:
                return r.session
        recent = self.app.store.recent_sessions(1)
        return recent[0].id if recent else None

    def action_inspect(self) -> None:
        """Open the highlighted request (Requests tab) in the inspector."""
        if self.active_tab != "requests":
            self.action_show_tab("requests")
            return
        row = self.query_one(RequestLog).selected()
        if row is None or row.ingested:
            self.app.notify("select a request first", severity="warning")
            return
        self.app.inspect(row.flow_id)

    def on_request_log_inspect_requested(self, message: RequestLog.InspectRequested) -> None:
        self.app.inspect(message.flow_id)
