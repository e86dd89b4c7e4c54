"""A DataTable that is kept equal to a list of rows with as little work as possible."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable


class SyncTable(DataTable):
    """``sync(rows)`` adds new rows, updates changed cells, removes missing rows and orders the rest.

    The cursor stays on the row it was on, unless it was on the first row: then it stays on the first
    row, so a newest-first table keeps following new entries.
    """

    def __init__(self, columns: Sequence[tuple[str, str, int | None]], **kw: Any) -> None:
        kw.setdefault("cursor_type", "row")
        kw.setdefault("zebra_stripes", False)
        super().__init__(**kw)
        self._spec = list(columns)  # (key, label, width)
        self._cells: dict[str, tuple] = {}
        self._first: dict[str, Any] = {}
        self._order: list[str] = []

    def on_mount(self) -> None:
        for key, label, width in self._spec:
            self.add_column(label, key=key, width=width)

    def set_width(self, column: str, width: int) -> bool:
        """Give a column a new width (columns are rebuilt, so call ``sync`` again). Returns whether it changed."""
        spec = [(k, label, width if k == column else w) for k, label, w in self._spec]
        if spec == self._spec:
            return False
        self._spec = spec
        self.clear(columns=True)
        self._cells.clear()
        self._first.clear()
        self._order = []
        self.on_mount()
        return True

    @property
    def keys(self) -> list[str]:
        return list(self._order)

    def highlighted_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:
            return None

    def sync(self, rows: Sequence[tuple[str, tuple]]) -> bool:
        """Make the table show ``rows`` (key, cells) in this order. Returns whether anything changed."""
        cursor_key = self.highlighted_key()
        follow = self.cursor_row == 0
        want = {k for k, _ in rows}
        changed = False
        for key in [k for k in self._cells if k not in want]:
            self.remove_row(key)
            del self._cells[key]
            self._first.pop(key, None)
            changed = True
        colkeys = [c[0] for c in self._spec]
        for key, cells in rows:
            if not isinstance(cells[0], Text):  # a fresh object per row (see the sort below)
                cells = (Text(str(cells[0])), *cells[1:])
            old = self._cells.get(key)
            if old is None:
                self.add_row(*cells, key=key)
                self._first[key] = cells[0]
                changed = True
            elif old != cells:
                for ck, a, b in zip(colkeys, old, cells):
                    if a != b:
                        self.update_cell(key, ck, b)
                        if ck == colkeys[0]:
                            self._first[key] = b
                changed = True
            self._cells[key] = cells
        order = [k for k, _ in rows]
        if order != self._order:
            # sort() hands the key function the row's cells; the first cell object identifies the row
            pos = {id(self._first[k]): i for i, k in enumerate(order)}
            self.sort(key=lambda values: pos.get(id(values[0]), 1 << 30))
            self._order = order
            changed = True
            if self.row_count:
                if follow or cursor_key not in want:
                    self.move_cursor(row=0, animate=False)
                else:
                    self.move_cursor(row=self.get_row_index(cursor_key), animate=False)
        return changed


class TablePanel[T](Vertical):
    """A panel around one SyncTable of ``COLUMNS``: :meth:`show` gives it (key, item, cells) rows;
    ``STRETCH`` (column, least, most) gives that column the width the others leave; :meth:`selected` is
    the highlighted row's item, and :meth:`show_detail` runs when the highlight moves."""

    COLUMNS: Sequence[tuple[str, str, int | None]] = ()
    STRETCH: tuple[str, int, int] | None = None
    TABLE_ID = ""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._items: dict[str, T] = {}
        self._cells: list[tuple[str, tuple]] = []

    def compose(self) -> ComposeResult:
        yield SyncTable(self.COLUMNS, id=self.TABLE_ID)

    @property
    def table(self) -> SyncTable:
        return self.query_one(SyncTable)

    def show(self, rows: Sequence[tuple[str, T, tuple]]) -> None:
        self._items = {k: item for k, item, _ in rows}
        self._cells = [(k, cells) for k, _, cells in rows]
        self._sync()

    def _sync(self) -> None:
        self.table.sync(self._cells)
        self.show_detail()

    def show_detail(self) -> None:
        pass

    def selected(self) -> T | None:
        key = self.table.highlighted_key()
        return self._items.get(key) if key else None

    def on_resize(self) -> None:
        if self.STRETCH is not None:
            column, least, most = self.STRETCH
            fixed = sum((w or 0) + 2 for k, _, w in self.COLUMNS if k != column) + 2 + 1  # cell padding, scrollbar
            if self.table.set_width(column, max(least, min(most, self.size.width - fixed))):
                self._sync()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_detail()
