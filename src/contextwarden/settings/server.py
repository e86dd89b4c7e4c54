from __future__ import annotations

from .base import Section


class ServerSection(Section):
    enabled: bool = True
    """Serve the live event stream to ``contextwarden tui`` on 127.0.0.1 (token-protected)."""

    port: int = 0
    """Port of the event server; 0 picks a free one (written with the token under cw_home)."""


class LogSection(Section):
    events_max_mb: float = 20
    """Size at which events.jsonl rotates."""

    events_backups: int = 5
    """Rotated event logs kept."""

    record_bodies: bool = False
    """Also record original and rewritten request bodies (credentials never included) for the inspector and replay."""
