"""Sections of the context stages: token accounting, stripping, clearing, compression, compaction, budgets."""

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


class PriceSection(Section):
    """A model's list price, for a model the built-in table lacks or prices otherwise."""

    input: float
    """Dollars per million uncached input tokens."""

    output: float
    """Dollars per million output tokens."""

    min_cache: int = 1024
    """The shortest prefix the model caches, in tokens."""

    read: float = 0.1
    """What a cached input token costs, as a fraction of an uncached one."""

    write: float = 1.25
    """What a token written to the cache (a 5-minute entry) costs, as a fraction of an uncached one."""


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
    """For the tool calls being cleared, also stub the large values of the call's ``input`` (a Write's
    body, an Edit's strings), keeping its small ones (the path). It re-writes assistant messages, so off
    by default (as in Anthropic's context management); the latest assistant message and those of the
    current turn with thinking blocks keep their inputs."""

    clear_all: bool = False
    """Above the trigger, clear every result but the ``keep_recent`` most recent (observation masking)."""

    keep_edited_reads: int = 0
    """A new clearing step keeps the Read results of files an Edit, MultiEdit or Write among the last
    this many tool calls changed (the model copies ``old_string`` from them). 0: off."""

    working_set_tokens: int = 0
    """A new clearing step keeps the working set (:mod:`contextwarden.wire.workingset`), the most recently
    touched files first, up to this many tokens. 0: off."""

    policy: Literal["off", "learn", "frozen"] = "off"
    """The tenant's learned policy (:mod:`contextwarden.compress.policy`): ``learn`` counts which cleared
    results the model fetched again and keeps the tools and paths that keep coming back, and which paths'
    Reads no session used late (their Reads go at another session's free moments); ``frozen`` applies
    what was learned without learning more."""

    cold_trigger_factor: float = 1.0
    """At a free moment (the provider writes the prompt again anyway: the cached prefix expired, previous
    request more than ``compaction.cache_ttl_s`` ago, or a new turn of a model that drops earlier thinking), a
    step needs only ``trigger_tokens`` times this; there, results of ``stale_after`` tools after that point
    go whatever the step's size. 1.0: the trigger unchanged."""

    stale_after: dict[str, int] = {}
    """Tool name -> N: a result of that tool is stale once N later calls of the same tool followed it (a
    build re-run, an edit followed by more edits), and a step of stale results alone clears them whatever
    the trigger, when they free at least ``stale_at_least`` tokens. {}: off."""

    stale_at_least: int = 2_000
    """The least a step of stale results frees."""

    level_factors: dict[str, float] = {"REDUCED": 0.75, "MINIMAL": 0.5}
    """Under a budget level, ``trigger_tokens``, ``keep_recent`` (rounded up) and ``clear_at_least`` are
    multiplied by this factor."""


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
    """User turns at the end that are never compacted below the hard threshold (all but the first when the
    conversation has no more)."""

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
    """The files being edited (:mod:`contextwarden.wire.workingset`) that a compaction folds are kept
    verbatim in its summary message, up to this many tokens (at most a quarter of ``target``). 0: off."""

    working_set_written: bool = False
    """The files a Write made count as files being edited for ``working_set_tokens``."""

    working_set_mentions: bool = False
    """A file the kept assistant messages name (in words or tool inputs) counts as being edited for
    ``working_set_tokens``, and as touched then for its rank."""

    working_set_latest_edits: float = 0.0
    """This share of ``working_set_tokens`` goes first to each edited file's latest Edit result (newest
    file first), the rest to the files whole. 0: off."""

    summary_breakpoint: bool = True
    """Put a ``cache_control`` breakpoint on the summary when the body has fewer than 4 (Anthropic only)."""

    cache_ttl_s: float = 300.0
    """Prompt-cache lifetime assumed by the soft-threshold cost model (Anthropic's default is 5 minutes)."""

    cold_soft_factor: float = 1.0
    """At a free moment (the provider writes the whole prompt again anyway: the cached prefix expired, the
    previous request more than ``cache_ttl_s`` ago or to another model, or a new turn dropping earlier
    thinking past the cache's lookback with no ``breakpoints`` mark on the turn starts), compaction starts at
    ``soft_threshold`` times this: a compaction there costs no cache write of its own, and it spares the one a
    compaction at the soft threshold would pay soon after. 1.0: the soft threshold unchanged."""

    cold_protect_turns: int | None = None
    """At a free moment, the user turns at the end a compaction keeps (when fewer than
    ``protect_recent_turns``): the fold is deeper where it writes nothing extra, and the next compaction,
    which pays its write, comes later. None: ``protect_recent_turns``."""

    expected_requests_max: int = 50
    """Cap on how many further requests the cost model expects to read a compacted prefix."""

    level_factors: dict[str, float] = {"REDUCED": 0.8, "MINIMAL": 0.6}
    """Under a budget level, the thresholds, ``target`` and ``protect_recent_turns`` (rounded up, at
    least 1) are multiplied by this factor."""


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


class CompressionSection(Section):
    enabled: bool = False
    """Compress large tool results the first time the proxy sees them (the result stays compressed, byte
    for byte, on every later request; the whole output is kept under the memory id its first line names)."""

    medium_chars: int = 1_024
    """Results shorter than this pass untouched."""

    large_chars: int = 5_120
    """Results from ``medium_chars`` up to this get the clean-up only (terminal codes, overwritten and
    repeated lines); from this size on, the compressor their content calls for (log, JSON, listing,
    relevant chunks)."""

    medium: bool = True
    """Apply the clean-up tier at all."""

    keep_ratio: float = 0.25
    """A large result keeps about this share of its characters ..."""

    min_keep_chars: int = 2_000
    """... but at least this many ..."""

    max_keep_chars: int = 8_000
    """... and at most this many (a log keeps every error line even past it)."""

    min_gain: float = 0.2
    """A result whose compressed form (first line included) saves less than this share stays whole."""

    tools: list[str] = ["*"]
    """Tools whose results are compressed (``*``: every tool not in ``never_tools``)."""

    never_tools: list[str] = ["Edit", "MultiEdit", "Write", "NotebookEdit", "Read", "NotebookRead"]
    """Tools whose results are never compressed (Read: the model copies its edits from them)."""

    keep_edited_reads: bool = True
    """Never compress a Read result of a file the session has edited (an Edit, MultiEdit or Write of
    its path in the request): the model copies its next edit's ``old_string`` from it."""

    keep_errors: bool = True
    """Never compress a result flagged as an error (``is_error``): the model is about to fix what it says."""

    process: str = "auto"
    """Where a result's first-sight work runs: ``separate`` (worker processes; no answer by 80% of the
    stage's budget leaves the result uncompressed), ``inline`` (the stage's thread), ``auto`` (separate
    in the proxy)."""

    workers: int = 2
    """Worker processes when ``process`` is separate (~90 MB each)."""
