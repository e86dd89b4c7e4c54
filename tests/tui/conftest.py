"""Fixtures the TUI tests share."""

from __future__ import annotations

import time

import pytest


@pytest.fixture
def utc(monkeypatch):
    """The TUI's clock times in UTC, whatever the machine's zone (snapshots and times compare as text)."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
