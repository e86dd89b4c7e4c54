"""Sections of the context stages: token accounting, stripping, clearing, compaction, budgets."""

from __future__ import annotations

from .base import Section


class TokensSection(Section):
    encoding: str = "cl100k_base"
    """tiktoken encoding for models that are not OpenAI's (OpenAI models use o200k_base)."""

    context_window: int = 200_000
    """The model's context window in tokens, which thresholds are fractions of."""

    calibrate: bool = True
    """Learn a per-model correction factor from the input tokens the provider reports."""


class StripSection(Section):
    enabled_patterns: list[str] = ["vc_prompt", "vc_user", "system_timestamp", "channel_header", "message_id"]
    """Built-in envelope patterns to strip (the OpenClaw envelopes)."""

    user_patterns: list[str] = []
    """Extra regular expressions whose matches are stripped."""

    rewrite_outgoing: bool = False
    """Also strip the outgoing message; by default only the text used for tagging and memory is cleaned."""


class ClearingSection(Section):
    enabled: bool = True
    """Clear old tool results (the client-side equivalent of Anthropic's clear_tool_uses)."""

    trigger_tokens: int = 100_000
    """Clear only when the request's input is above this many tokens."""

    keep_recent: int = 6
    """The most recent tool uses whose results are always kept."""

    clear_at_least: int = 20_000
    """Clear at least this many tokens at a time (big steps keep the cache prefix stable longer)."""

    exclude_tools: list[str] = []
    """Tool names whose results are never cleared."""


class CompactionSection(Section):
    enabled: bool = True
    """Compact old turns into one summary block past the thresholds."""

    soft_threshold: float = 0.70
    """Fraction of the context window where compaction starts if it pays off over the cache's lifetime."""

    hard_threshold: float = 0.85
    """Fraction of the context window where compaction always happens."""

    target: float = 0.40
    """Fraction of the window the request should use after compacting (big steps, rare re-writes)."""

    protect_recent_turns: int = 4
    """User turns at the end that are never compacted."""

    summariser: str = "extractive"
    """``extractive`` (offline, deterministic) or ``llm`` (calls the upstream with the user's credentials)."""

    llm_model: str | None = None
    """Model for the llm summariser; defaults to the request's model."""


class BudgetSection(Section):
    enabled: bool = False
    """Throttle sessions and agents against token budgets."""

    session_tokens: int = 0
    """Input tokens a session may send (0 = no limit)."""

    agent_tokens: int = 0
    """Input tokens one agent may send (0 = no limit)."""

    reduced_at: float = 0.70
    """Fraction of a budget where the level becomes REDUCED (pruning tightens)."""

    minimal_at: float = 0.90
    """Fraction of a budget where the level becomes MINIMAL (pruning is most aggressive)."""

    agent_rule: str = "claude-code"
    """How an agent key is derived: ``claude-code`` (main agent vs subagents by system prompt), ``header``, ``session``."""

    retry_after_s: int = 60
    """``retry-after`` seconds sent with a BLOCKED answer."""
