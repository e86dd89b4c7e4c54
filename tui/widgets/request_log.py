"""The Request log: newest first, one row per request, a detail line for the highlighted one."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.message import Message
from textual.widgets import DataTable, Static

from contextwarden.wire.cost import DEFAULT_PRICE, billed_units, provider_compaction

from .. import format as fmt
from ..store import RequestRow, Store
from .synctable import TablePanel

# Fits 80 columns with the scrollbar; the time and every stage's ms are in the detail lines below.
COLUMNS = [("turn", "turn", 4), ("session", "session", 8), ("tags", "tags", 12), ("in", "in", 6),
           ("sent", "sent", 6), ("mem", "mem", 4), ("stages", "stages", 8), ("up", "up ms", 5),
           ("status", "st", 3), ("level", "lvl", 3)]

LEVEL_STYLE = {"NORMAL": "", "REDUCED": "yellow", "MINIMAL": "bold yellow", "BLOCKED": "bold red"}
LEVEL_SHORT = {"NORMAL": "–", "REDUCED": "RDC", "MINIMAL": "MIN", "BLOCKED": "BLK"}


def stages_cell(row: RequestRow) -> str:
    """Total stage time and the slowest stage, e.g. ``4.1 cp``; the detail line has them all."""
    if not row.stages:
        return "–"
    total = sum(row.stages.values())
    slowest = max(row.stages, key=lambda s: row.stages[s])
    bad = [s for s, st in row.stage_status.items() if st != "ok"]
    return f"{fmt.ms(total)} {fmt.abbrev(bad[0] if bad else slowest)}{'!' if bad else ''}"


def row_cells(row: RequestRow) -> tuple:
    style = "dim" if row.ingested else ""
    status = row.status
    st_style = "red" if isinstance(status, int) and status >= 400 or status == "error" else style
    sent_style = style or ("green" if row.tokens_sent is not None and row.tokens_in is not None and row.tokens_sent < row.tokens_in else "")
    level = (row.level or "").upper()
    stages = stages_cell(row)
    return (
        Text(str(row.turn) if row.turn is not None else "–", style=style),
        Text((f"{row.replica}·" if row.replica else "") + fmt.short_id(row.session), style=style),
        Text(",".join(row.tags) if row.tags else "–", style=(style or "cyan") if row.tags else "dim"),
        Text(fmt.num(row.tokens_in), style=style, justify="right"),
        Text(fmt.num(row.tokens_sent), style=sent_style, justify="right"),
        Text(fmt.num(row.mem_tokens) if row.mem_tokens else "–", style=style, justify="right"),
        Text(stages if not row.ingested else "history", style=style or ("red" if "!" in stages else "")),
        Text(fmt.ms(row.upstream_ms), style=style, justify="right"),
        Text(str(status) if status is not None else ("–" if row.ingested else "…"), style=st_style),
        Text(LEVEL_SHORT.get(level, level[:3]) if level else "–", style=style or LEVEL_STYLE.get(level, "")),
    )


def detail_text(row: RequestRow | None) -> Text:
    """Three lines, each cut to the width rather than wrapped: what the request was, every stage's
    time, what happened upstream."""
    if row is None:
        return Text("no request selected · enter: inspect bodies · b: bypass session · e: export session", style="dim")
    t = Text(no_wrap=True, overflow="ellipsis")
    if row.ingested:
        t.append("ingested from history · ", style="dim italic")
    t.append(f"{fmt.clock(row.ts)} ", style="dim")
    t.append(f"{row.flow_id[:12]} ", style="bold")
    if row.replica:
        t.append(f"replica {row.replica} · ", style="magenta")
    t.append(" ".join(x for x in (row.model, row.mode if row.mode != "active" else None) if x)
             + (f" · {row.transport}" if row.transport != "http" else "")
             + f" · {row.messages if row.messages is not None else '?'} msgs")
    if row.level:
        t.append(f" · level {row.level}", style=LEVEL_STYLE.get(row.level.upper(), ""))
    if row.tags:
        t.append(" · ")
        t.append(", ".join(row.tags), style="cyan")
    t.append("\n")
    if row.stages:
        t.append(" ".join(f"{s} {fmt.ms(v)}" + ("" if row.stage_status.get(s, "ok") == "ok" else f" ({row.stage_status[s]})")
                          for s, v in row.stages.items()))
    else:
        t.append("no stage ran" if row.mode in ("observe", "bypass") else "stages –", style="dim")
    t.append("\n")
    if row.pipeline_ms is not None:
        t.append(f"pipeline {fmt.ms(row.pipeline_ms)} ms · ")
    t.append(f"upstream {fmt.ms(row.upstream_ms)} ms")
    if row.status is not None:
        t.append(f" · {row.status}")
    comp = provider_compaction(row.usage)  # the provider's own context management, billed on top
    if comp:
        t.append(f" · provider compacted ({fmt.num(billed_units(comp, row.price or DEFAULT_PRICE))} in at 1x, {fmt.num(comp['output_tokens'])} out)", style="magenta")
    if cleared := (row.usage or {}).get("provider_cleared_tokens"):
        t.append(f" · provider cleared {fmt.num(cleared)}", style="magenta")
    if row.reason:
        t.append(f" · {row.reason}", style="dim")
    if row.error:
        t.append(f" · {row.error}", style="red")
    return t


class RequestLog(TablePanel[RequestRow]):
    DEFAULT_CSS = """
    RequestLog > SyncTable { height: 1fr; }
    RequestLog > #request-detail { height: 3; padding: 0 1; background: $boost; text-wrap: nowrap; text-overflow: ellipsis; }
    """
    COLUMNS = COLUMNS
    STRETCH = ("tags", 12, 60)  # wider terminals give the tags column the room the fixed columns leave
    TABLE_ID = "requests-table"

    class InspectRequested(Message):
        def __init__(self, flow_id: str) -> None:
            super().__init__()
            self.flow_id = flow_id

    def compose(self) -> ComposeResult:
        yield from super().compose()
        yield Static(detail_text(None), id="request-detail")

    def refresh_from(self, store: Store) -> None:
        self.show([(r.flow_id, r, row_cells(r)) for r in store.newest_requests()])

    def show_detail(self) -> None:
        self.query_one("#request-detail", Static).update(detail_text(self.selected()))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        row = self.selected()
        if row is not None and not row.ingested:
            self.post_message(self.InspectRequested(row.flow_id))
