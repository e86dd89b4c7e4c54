"""``ctx.notes``: what a stage hands to later stages and to the turn hooks, one declared key each.

A dict at run time (a third-party stage may keep its own keys under its own name); the keys the built-in
stages use are declared here with their type and writer, and ``tests/test_notes.py`` fails when code
reads or writes a key that is not, or a request's notes hold a value of another type.
"""

from __future__ import annotations

from typing import Any, TypedDict


class Notes(TypedDict, total=False):
    # the core (pipeline.prepare, lifecycle.admit)
    transport: str  # "http", or "websocket" for a message of the Responses WebSocket
    provider: Any  # what the client delegated to the provider (dialects.ProviderContext): read once, in prepare
    replay: dict[str, Any]  # replay only: {"ts", "index", "target_tokens"?} (plugins/baselines.py reads it)
    # budget
    level: Any  # the budget level (budget.Level, compares equal to its name), None: NORMAL
    budget: dict[str, Any]  # the budget report of the request
    # strip
    clean_text: dict[int, str]  # message index -> its text cleaned of channel envelopes (only those it changed)
    # tagging
    tags: list[str]  # keyword tags of the last user message
    active_tags: list[str]  # tags of the last ``tagging.active_turns`` messages
    # clearing (and compression, which adds to both)
    clearing: dict[str, Any]  # {"freed": tokens, "by_index": {message index: tokens freed}}
    cleared: list[dict[str, Any]]  # every result cleared in this request (tool_use_id, memory_id, text, new, ...)
    # compaction
    compaction: dict[str, Any]  # {"lead", "end", "reused", "summary_tokens", "messages"}
    compacted: list[dict[str, Any]]  # the tool results a new summary folded (tool_use_id, memory_id, tool, input, text)
    folded: list[dict[str, Any]]  # the spans a new summary folded, kept whole (memory_id, text, first, last)
    # memory
    memory: dict[str, Any]  # what retrieval injected (injected, tokens, ids, ms, skipped, ...)
    memory_source: tuple  # memory.produced: (first index captured, a view of the messages as the stages left them)
    memory_ingest_start: tuple  # (start, history) of the memory stage's ingestion start, worked out once
    memory_project: str | None  # the client's working directory (memory/project.py), worked out once
    # recall
    recalled: list[str]  # the texts auto-recall put back (replay's fidelity counts them)
    # session control (sessionctl.ledger)
    session_control: Any  # the session's controls read once a request (rollback, pins, compact now)


#: every declared key
KEYS = frozenset(Notes.__annotations__)
