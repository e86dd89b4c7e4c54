"""A DataTable that is kept equal to a list of rows with as little work as possible."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable


class SyncTable(DataTable):
    """``sync(rows)`` makes the table show (key, cells) rows in that order: changed cells are updated in
    place, a new order rebuilds the rows. The cursor stays on its row, unless it was on the first row:
    then it stays on the first row, so a newest-first table keeps following new entries."""

    def __init__(self, columns: Sequence[tuple[str, str, int | None]], **kw: Any) -> None:
        kw.setdefault("cursor_type", "row")
        super().__init__(**kw)
        self._spec = list(columns)  # (key, label, width)
        self._cells: dict[str, tuple] = {}

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
        self._cells = {}
        self.on_mount()
        return True

    @property
    def keys(self) -> list[str]:
        return list(self._cells)

    def highlighted_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:
            return None

    def sync(self, rows: Sequence[tuple[str, tuple]]) -> None:
        """Make the table show ``rows`` (key, cells) in this order."""
        want = dict(rows)
        if list(want) == list(self._cells):
            colkeys = [c[0] for c in self._spec]
            for key, cells in rows:
                for ck, a, b in zip(colkeys, self._cells[key], cells):
                    if a != b:
                        self.update_cell(key, ck, b)
        else:
            cursor_key = self.highlighted_key() if self.cursor_row > 0 else None
            self.clear()
            for key, cells in rows:
                self.add_row(*cells, key=key)
            if rows:
                self.move_cursor(row=list(want).index(cursor_key) if cursor_key in want else 0, animate=False)
        self._cells = want


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
