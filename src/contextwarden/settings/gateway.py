"""Settings of a proxy that runs as one of several replicas (a team gateway): shared state, metrics."""

from __future__ import annotations

from .base import Section


class StateSection(Section):
    url: str = ""
    """Where session decisions, budgets, calibration, run-time overrides and bypass live. Empty: SQLite
    under the data directory (one proxy). ``redis://HOST:PORT/DB`` (any Redis-protocol server): shared
    by every proxy given the same URL, so requests of one session may land on any of them."""

    prefix: str = "cw"
    """Prefix of every key this proxy writes on a shared server (several gateways on one server)."""

    key_file: str = ""
    """A file holding the 32-byte encryption key (64 hex digits or base64) for stored state values and
    memory documents; ``CONTEXTWARDEN_KEY`` takes precedence. Empty and no variable: nothing is encrypted."""

    replica: str = ""
    """This proxy's name in events (the ``replica`` field) and metrics; empty: host name and port."""

    sync_s: float = 1.0
    """With a shared backend: how often run-time overrides and bypass set on another replica are read."""


class MetricsSection(Section):
    port: int = 0
    """Port of the Prometheus ``/metrics``, ``/healthz`` and ``/readyz`` endpoint; 0: off."""

    host: str = "127.0.0.1"
    """Address the metrics endpoint listens on (``0.0.0.0`` for a scraper on another host)."""
