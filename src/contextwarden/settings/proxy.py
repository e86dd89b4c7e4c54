from __future__ import annotations

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
