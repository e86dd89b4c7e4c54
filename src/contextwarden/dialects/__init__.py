"""One module per API dialect: what differs between the APIs the proxy understands, in one place each.

A :class:`Dialect` names, for one API: where a body keeps its history (``history_key``), its typed
request and message models, how to read one history entry for the conversation walk (``entry``: roles,
tool calls opened and answered, user turns), where its tool calls are (``tool_calls``), its validator
rules (``check``), its stream assembler, and how memory is put into a request (``inject``/``injectable``).
Code that needs one of these asks ``dialect(api)`` instead of branching on :class:`ApiKind`; a new API
is one new module here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..models.base import ApiKind, WireModel


@dataclass(frozen=True)
class ProviderContext:
    """What a request asks the provider to manage itself, and what our stages do about it: decided once
    per request by the dialect (``Dialect.provider``), handed to the stages as ``ctx.notes["provider"]``
    (docs/provider-context-management.md has the table of cases).

    ``boundary``: the first history index our stages may edit; what comes before (up to and including the
    message or item that holds the latest compaction block or item) is the provider's: kept byte-exact,
    and what the provider drops before it is not ours to save. ``update``: top-level fields to set in
    the request (None: remove the field) when a delegated edit is taken over."""

    clears_tool_uses: bool = False  # the provider clears tool uses (Anthropic clear_tool_uses_20250919)
    clears_thinking: bool = False  # the provider clears thinking (Anthropic clear_thinking_20251015)
    keeps_thinking: bool = False  # ... with ``keep: "all"``: earlier turns' thinking stays in the prompt (Claude Code)
    compacts: bool = False  # the provider compacts (compact_20260112; Responses compact_threshold; compaction_trigger)
    boundary: int = 0
    dropped: int = 0  # leading messages the provider drops (Anthropic: those before the compaction block's)
    taken: tuple[str, ...] = ()  # what was delegated and is taken over (pipeline.provider_take_over)
    update: tuple[tuple[str, Any], ...] = ()

    @property
    def clearing_steps_back(self) -> bool:
        """Our clearing decides nothing new (it re-applies its earlier records): the provider clears."""
        return self.clears_tool_uses

    @property
    def compaction_steps_back(self) -> bool:
        """Our compaction does nothing (not even re-applying a summary): the provider compacts."""
        return self.compacts


NO_PROVIDER = ProviderContext()


def taking_over(delegated: dict[str, bool], take_over: frozenset[str]) -> tuple[str, ...]:
    """The delegated kinds (``clear_tool_uses``, ``compaction``) the profile takes over."""
    return tuple(k for k, on in delegated.items() if on and k in take_over)


def last_index(items: Any, found: Callable[[Any], bool], known: tuple[int, int] | None = None) -> int:
    """The index after the last history entry ``found`` is true of, or 0. ``known``: ``(n, index)``
    worked out for the first ``n`` entries by the conversation's previous request: only the entries
    after them are looked at."""
    if not isinstance(items, list):
        return 0
    n, prior = known if known is not None and known[0] <= len(items) else (0, 0)
    return next((i + 1 for i in range(len(items) - 1, n - 1, -1) if found(items[i])), prior)


@dataclass(frozen=True)
class Dialect:
    kind: ApiKind
    history_key: str  # "messages", or the Responses API's "input"
    request_model: type[WireModel]
    message_model: type[WireModel] | None  # the typed history entry (None: entries stay the client's dicts)
    entry: Callable[[int, Any], Any]  # one wire message / item -> conversation.Entry
    tool_calls: Callable[[list[Any]], dict]  # the history's tool calls by id -> conversation.ToolCall
    check: Callable[..., list]  # the validator's rules: (new, original) -> problems
    assembler: type  # the stream assembler (contextwarden.streams): the assistant's turn from the response
    inject: Callable[[Any, str], str]  # memory: append a block to the request (typed), where it went
    injectable: Callable[[Any], None]  # memory: raise NotInjectable when there is no cache-safe place
    text_of: Callable[[Any], str]  # a (typed) history entry's plain text: what strip cleans
    summary_message: Callable[[str, dict | None], Any]  # compaction: its summary as a user message (cache_control: Anthropic's breakpoint)
    error_answer: Callable[..., tuple[bytes, dict[str, str]]]  # (message, stream, kind="rate_limit"|"upstream") -> (body, headers) of an error in the API's own format (stream: as the client reads a stream)
    endpoint: tuple[str, str]  # a default (host, path) of the API (in-process replay and evaluations)
    reply: Callable[[str], dict]  # an assistant answer of plain text, as the API returns it (replayed turns)
    answer_messages: Callable[[dict], list]  # the history entries an answer (AssembledTurn.message) adds
    rewrite_text: Callable[[Any, Callable[[str], str | None]], Any]  # strip: a copy of a user message with fn applied to its texts (None: unchanged)
    item_texts: Callable[[Any, list], None]  # memory: (entry, out) appends the texts of the entry a stored item could equal
    message_tokens: Callable[[Any, dict, Any], int]  # (TokenCounter, a wire message, encoding): its tokens
    request_defaults: tuple[tuple[str, Any], ...] = ()  # fields a minimal request needs besides model and history
    system_key: str | None = None  # the request's top-level instructions (Anthropic ``system``, Responses ``instructions``)
    cache_breakpoints: bool = False  # prompt caching by ``cache_control`` breakpoints (cost.PromptCache bills it)
    tool_frame: int = 8  # tokens around a tool call or result (tokens.TOOL_CALL_OVERHEAD; Anthropic's differ)
    # memory: (history, first turn, clean_text, add) calls add(text, turn, role, kind, tool) for each item a
    # history holds: a message's text and each tool result (memory.ingest.items_from_messages)
    memory_items: Callable[[list, int, dict, Callable], None] | None = None
    thinking_dropped: bool = False  # the provider drops earlier turns' thinking blocks for some models (tokens.strips_thinking)
    # compaction's LLM summary (summarise.llm_summary): (auth headers, model, instructions, transcript,
    # max_tokens) -> the body and headers of a one-off request to the client's endpoint
    summary_request: Callable[[dict, str, str, str, int], tuple[dict, dict]] | None = None
    # where that request goes when not to the client's own endpoint: request path -> (path, API of it)
    summary_route: Callable[[str], tuple[str, ApiKind]] | None = None
    # the provider's own context management a request asks for: (body, what the previous request worked
    # out about its first messages (last_index), kinds the profile takes over) -> ProviderContext (None:
    # the API has none)
    provider: Callable[[dict, tuple[int, int] | None, frozenset[str]], ProviderContext] | None = None

    def body(self, history: list, model: str, **extra) -> dict[str, Any]:
        """A minimal request body of this API around ``history`` (replay, evaluations)."""
        return {"model": model, **dict(self.request_defaults), self.history_key: history, **extra}

    def messages_of(self, body: Any) -> list | None:
        """The history list of a wire dict or a typed request; None when absent or not a list."""
        v = body.get(self.history_key) if isinstance(body, dict) else getattr(body, self.history_key, None)
        return v if isinstance(v, list) else None

    def provider_context(self, body: dict, known: tuple[int, int] | None = None,
                         take_over: frozenset[str] = frozenset()) -> ProviderContext:
        """What ``body`` delegates to the provider (the one decision per request: pipeline.prepare;
        ``known``: see :func:`last_index`)."""
        return self.provider(body, known, take_over) if self.provider is not None else NO_PROVIDER

    def parse(self, body: dict) -> WireModel:
        return self.request_model.model_validate(body)



def rewrite_parts(content: Any, fn: Callable[[str], str | None], text_types: tuple[str, ...]) -> Any:
    """A copy of a string or list-of-parts content with ``fn`` applied to its text parts, or None when
    ``fn`` changed nothing (``fn``: a new text, None for unchanged)."""
    if isinstance(content, str):
        return fn(content)
    if not isinstance(content, list):
        return None
    out = [{**p, "text": t} if isinstance(p, dict) and p.get("type") in text_types and isinstance(p.get("text"), str)
           and (t := fn(p["text"])) is not None else p for p in content]
    return out if any(a is not b for a, b in zip(out, content)) else None


def history_dicts(messages: list, start_turn: int) -> Iterator[tuple[int, dict, str]]:
    """(turn, wire dict, role) of each message after the leading system/developer ones (the cached
    prefix memory does not store); a typed message is read as its wire form, a non-object skipped."""
    prefix = True
    for i, raw in enumerate(messages):
        raw = raw.wire() if hasattr(raw, "wire") else raw
        if not isinstance(raw, dict):
            continue
        role = str(raw.get("role") or "user")
        if prefix and role in ("system", "developer"):
            continue
        prefix = False
        yield start_turn + i, raw, role


_DIALECTS: dict[ApiKind, Dialect] = {}


def dialect(api: ApiKind | str) -> Dialect:
    """The dialect of ``api``."""
    if not _DIALECTS:
        from . import anthropic, ollama, openai_chat, responses

        for m in (anthropic, openai_chat, responses, ollama):
            _DIALECTS[m.DIALECT.kind] = m.DIALECT
    return _DIALECTS[ApiKind(api)]
