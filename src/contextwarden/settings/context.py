"""Sections of the context stages: token accounting, stripping, clearing, compaction, budgets."""

from __future__ import annotations

from typing import Literal

from .base import Section


class TokensSection(Section):
    encoding: str = "cl100k_base"
    """tiktoken encoding for models that are not OpenAI's (OpenAI models use o200k_base)."""

    context_window: int = 200_000
    """The model's context window in tokens, which thresholds are fractions of."""

    calibrate: bool = True
    """Learn a per-model correction factor from the input tokens the provider reports."""

    cache_entries: int = 200_000
    """Token counts remembered per content hash (messages, blocks, long texts); the least recently used go first."""

    image_tokens: int = 1600
    """Fixed estimate for one image or base64 document (Anthropic's figure for a full-size ~1.15 MP image)."""

    load_timeout_s: float = 15
    """How long loading a tiktoken encoding may take (a download without a cache) before estimating instead."""


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

    min_result_tokens: int = 100
    """Results smaller than this are left alone (their stub would save next to nothing); with
    ``clear_tool_inputs``, inputs smaller than this too."""

    clear_tool_inputs: bool = False
    """For the tool calls being cleared, also replace the large values of the call's ``input`` (a Write's
    file body, an Edit's strings) with a stub naming their memory id; the input stays a JSON object and
    keeps its small values (the path, the command). Calls with a short result (Write, Edit) are cleared
    for their input alone. Off by default, like ``clear_tool_inputs`` in Anthropic's context management:
    it re-writes the assistant messages too. The latest assistant message, and those of the current turn
    that carry thinking blocks, always keep their inputs."""

    clear_all: bool = False
    """Above the trigger, clear every result but the ``keep_recent`` most recent (Anthropic's
    ``clear_tool_uses``, and observation masking), not just enough to get back under the trigger."""

    keep_edited_reads: int = 0
    """A new clearing step leaves alone the Read results of files that an Edit, MultiEdit or Write
    among the last this many tool calls changed: the model copies an Edit's ``old_string`` from them.
    0: off."""

    working_set_tokens: int = 0
    """A new clearing step leaves alone the working set (:mod:`contextwarden.wire.workingset`): per file, its
    latest Read (unless a Write came after it) and the Edit results since, the most recently touched
    files first, up to this many tokens. The model copies its Edits' ``old_string`` from them. 0: off."""

    policy: Literal["off", "learn", "frozen"] = "off"
    """The tenant's learned policy (:mod:`contextwarden.compress.policy`, ``contextwarden policy show``): ``learn``
    counts which cleared results the model fetched again (re-read, re-run, recalled by the stub's id)
    and leaves alone the results of tools that keep coming back and the Reads of paths that did;
    ``frozen`` applies what was learned without learning more; ``off`` neither."""

    cold_trigger_factor: float = 1.0
    """At a free moment (the session's previous request came more than ``compaction.cache_ttl_s`` ago:
    the provider's cached prefix has expired and whatever is sent is written again), a step needs only
    ``trigger_tokens`` times this factor and clears any amount. 1.0: off."""

    stale_after: dict[str, int] = {}
    """Tool name -> N: a result of that tool is stale once N later calls of the same tool followed it (a
    build re-run, an edit followed by more edits), and a step of stale results alone clears them whatever
    the trigger, when they free at least ``stale_at_least`` tokens. {}: off."""

    stale_at_least: int = 2_000
    """The least a step of stale results frees."""

    level_factors: dict[str, float] = {"REDUCED": 0.75, "MINIMAL": 0.5}
    """Under a budget level, ``trigger_tokens``, ``keep_recent`` and ``clear_at_least`` are multiplied by
    this factor (``keep_recent`` rounded up), so clearing starts earlier and keeps less."""


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

    llm_base_url: str | None = None
    """Where the llm summariser sends its request (scheme://host[:port]); defaults to ``https://<request host>``."""

    llm_timeout_s: float = 60.0
    """Time limit of one llm summariser call (it runs in the background, never on the request path)."""

    llm_max_tokens: int = 2048
    """``max_tokens`` of the llm summariser's request."""

    summary_max_tokens: int = 3000
    """Upper bound of a summary's size (the extractive summariser budgets about 4 characters a token)."""

    min_span_tokens: int = 2000
    """Do not compact spans smaller than this: the re-written cache costs more than it saves."""

    working_set_tokens: int = 0
    """The files being edited (:mod:`contextwarden.wire.workingset`: per file an Edit changed, its latest Read
    and the Edit results since, the most recently touched files first, up to this many tokens) that a
    compaction folds are kept verbatim in its summary message; the cut goes that much deeper. At most a
    quarter of ``target`` (of the window). 0: off."""

    working_set_written: bool = False
    """The files a Write made count as files being edited for ``working_set_tokens`` (the agent writes a
    file, then edits it: the ``old_string`` is in the Write's content)."""

    working_set_mentions: bool = False
    """A file the assistant's messages that stay (after the cut) name, in their words or their tool
    calls' inputs (it runs the script, it talks about the document), counts as a file being edited for
    ``working_set_tokens``, and as touched then for its rank."""

    working_set_latest_edits: float = 0.0
    """This share of ``working_set_tokens`` goes first to the latest Edit result of each file being
    edited (newest file first), the rest to the files whole: a file edited long ago keeps the text its
    next Edit starts from. 0: off (files whole, the most recently touched first)."""

    summary_breakpoint: bool = True
    """Put a ``cache_control`` breakpoint on the summary when the body has fewer than 4, so the compacted
    prefix is cached on its own (Anthropic only)."""

    cache_ttl_s: float = 300.0
    """Prompt-cache lifetime assumed by the soft-threshold cost model (Anthropic's default is 5 minutes)."""

    expected_requests_max: int = 50
    """Cap on how many further requests the cost model expects to read a compacted prefix."""

    level_factors: dict[str, float] = {"REDUCED": 0.8, "MINIMAL": 0.6}
    """Under a budget level, ``soft_threshold``, ``hard_threshold`` and ``target`` are multiplied by this
    factor and ``protect_recent_turns`` too (rounded up, at least 1)."""


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
