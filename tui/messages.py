"""Typed messages the event sources post to the app."""

from __future__ import annotations

from typing import Any

from textual.message import Message


class SnapshotReceived(Message):
    """A fresh start: the proxy's recent events, settings and totals (or a whole offline log)."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        super().__init__()
        self.snapshot = snapshot


class EventsReceived(Message):
    """A batch of live events; ``extra`` holds settings that came with it (after a change)."""

    def __init__(self, events: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.events = events
        self.extra = extra or {}


class EventsDropped(Message):
    """The proxy dropped batches because the TUI read too slowly; ``totals`` are the proxy's counters."""

    def __init__(self, count: int, totals: dict[str, Any] | None) -> None:
        super().__init__()
        self.count = count
        self.totals = totals


class ConnectionChanged(Message):
    """``state``: connecting, connected, waiting, refused, disconnected, offline."""

    def __init__(self, state: str, detail: str = "") -> None:
        super().__init__()
        self.state = state
        self.detail = detail
