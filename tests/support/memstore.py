"""Shared pieces of the memory-storage tests: the real model (loaded once) and real Chroma stores."""

from __future__ import annotations

import functools
from pathlib import Path

from contextwarden.core.events import EventBus
from contextwarden.memory.embedder import Embedder
from contextwarden.memory.items import MemoryItem
from contextwarden.memory.store import MemoryStore
from contextwarden.settings.memory import MemorySection

from ..conftest import MODEL_DIR


@functools.cache
def embedder() -> Embedder:
    """The all-MiniLM-L6-v2 ONNX model from ../shared, loaded once per test run."""
    if not (MODEL_DIR / "model.onnx").is_file():
        raise AssertionError(f"embedding model missing at {MODEL_DIR}")
    return Embedder(MODEL_DIR, source=f"model dir {MODEL_DIR} (tests)")


def store(home: Path, with_model: bool = True, **settings) -> MemoryStore:
    s = MemoryStore(home, MemorySection(**settings), embedder() if with_model else None)
    assert s.available, s.error
    return s


def item(text: str, session: str = "s1", tenant: str = "t-a", turn: int = 0, role: str = "user",
         kind: str = "message", **kw) -> MemoryItem:
    return MemoryItem(text=text, session=session, tenant=tenant, turn=turn, role=role, kind=kind, **kw)


def events(bus: EventBus, type: str) -> list[dict]:
    return [e.data for e in list(bus.recent) if e.type == type]
