"""Sections of the proxy process: what it handles, its event server and log, shared state, metrics."""

from __future__ import annotations

from typing import Literal

from ..util.sealing import Sealer, load_key
from .base import Section


class ProxySection(Section):
    observe_only: bool = False
    """Never change a byte: stages do not run, the request is forwarded at once and only observed."""

    anthropic_hosts: list[str] = ["api.anthropic.com"]
    """Hosts whose /v1/messages requests are Anthropic Messages calls."""

    openai_hosts: list[str] = ["api.openai.com", "chatgpt.com", "openrouter.ai"]
    """Hosts whose /v1/chat/completions and /v1/responses requests are handled (and Codex's ChatGPT-plan
    endpoint /backend-api/codex/responses), over HTTP and the Responses WebSocket."""

    openai_compatible_hosts: list[str] = []
    """More OpenAI-compatible hosts (``host`` or ``host:port``), e.g. a vLLM or LiteLLM server."""

    ollama_hosts: list[str] = ["localhost:11434", "127.0.0.1:11434"]
    """Ollama servers (``host:port``); /api/chat and the OpenAI-compatible paths are handled."""

    reverse_any_host: bool = True
    """In reverse mode the client chose us as its base URL, so any upstream host is recognised by path."""

    max_body_mb: float = 64
    """Bodies larger than this are forwarded untouched (and reported) without parsing."""

    consumed_headers: list[str] = ["x-contextwarden-session", "x-contextwarden-agent", "x-contextwarden-bypass"]
    """Headers addressed to the proxy itself; read, then removed before the request goes upstream."""

    auto_process: Literal["inline", "separate"] = "inline"
    """What ``auto`` means for ``memory.process`` and ``compression.process``: ``contextwarden run`` and the
    engine process set ``separate`` (``CONTEXTWARDEN_PROXY__AUTO_PROCESS``), as does a mitmdump, mitmproxy
    or mitmweb process; ``inline`` elsewhere (tests, replay, evaluations, the CLI)."""


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

    def sealer(self) -> Sealer:
        """What seals stored state values and memory documents: the key of ``CONTEXTWARDEN_KEY`` or
        ``key_file``; without one nothing is sealed. Raises ``SealError`` for a key that cannot be read."""
        return Sealer(load_key(self.key_file))

    replica: str = ""
    """This proxy's name in events (the ``replica`` field) and metrics; empty: host name and port."""

    sync_s: float = 1.0
    """With a shared backend: how often run-time overrides and bypass set on another replica are read."""


class MetricsSection(Section):
    port: int = 0
    """Port of the Prometheus ``/metrics``, ``/healthz`` and ``/readyz`` endpoint; 0: off."""

    host: str = "127.0.0.1"
    """Address the metrics endpoint listens on (``0.0.0.0`` for a scraper on another host)."""
