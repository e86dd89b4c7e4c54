"""What a screen may ask of the app it runs in: the app's store and its commands.

Screens name this base, not :class:`~contextwarden.tui.app.ContextWardenApp`, which imports the screens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual.app import App

from .store import Store


class Host(App[None]):
    store: Store
    clock: Callable[[], float]
    connection_state: str
    connection_detail: str
    last_command_error: str | None

    async def command(self, cmd: dict[str, Any], quiet: bool = False) -> Any | None:
        raise NotImplementedError

    async def apply_settings(self, overrides: dict[str, Any], persist: bool) -> bool:
        raise NotImplementedError

    def save_export(self, name: str, payload: Any, what: str, done: str) -> None:
        raise NotImplementedError

    def inspect(self, flow_id: str) -> None:
        raise NotImplementedError
