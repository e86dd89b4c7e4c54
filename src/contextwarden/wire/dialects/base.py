"""What every dialect has: the :class:`Dialect` base class and the helpers the API modules share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from ...models.base import ApiKind, WireModel
from ..conversation import Entry, ToolCall, Turn, transcript
from ..validate import Checkpoints, FactCache, Problem

# The token framing of the dialects' token walks (``Dialect.message_tokens``; tokens.TokenCounter counts)
CHARS_PER_TOKEN = 4  # the estimate used when no tiktoken encoding can be loaded
MESSAGE_OVERHEAD = 4  # role and separators around each message
BLOCK_OVERHEAD = 1  # separators between content blocks
TOOL_CALL_OVERHEAD = 8  # ids, name/argument framing of a tool call or its result


@dataclass(frozen=True)
class ProviderContext:
    """What a request asks the provider to manage itself, and what our stages do about it: decided once
    per request by the dialect (``Dialect.provider_context``), handed to the stages as ``ctx.notes["provider"]``
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
_ENTRIES = ("dialect", "entries")  # a conversation's slot: the entries of the messages seen (Dialect.entries)


class Counter(Protocol):
    """What a dialect's token walk (:meth:`Dialect.message_tokens`) asks of ``tokens.TokenCounter``."""

    @property
    def settings(self) -> Any: ...

    def _text(self, text: Any, enc: Any) -> int: ...

    def _content(self, d: Dialect, c: Any, enc: Any) -> int: ...

    def _block(self, d: Dialect, b: Any, enc: Any) -> int: ...


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


class NotInjectable(Exception):
    """Memory cannot go into this request without moving a cached prefix (the reason says why)."""


def has_cache_control(obj: Any) -> bool:
    """Does ``obj`` (a wire value) carry a prompt-cache breakpoint anywhere."""
    if isinstance(obj, dict):
        return "cache_control" in obj or any(has_cache_control(v) for v in obj.values())
    if isinstance(obj, list):
        return any(has_cache_control(v) for v in obj)
    return False


def last_user_index(messages: list[Any], role_of: Callable[[Any], str]) -> int | None:
    """Index of the last message ``role_of`` calls the user's (None without one)."""
    for i in range(len(messages) - 1, -1, -1):
        if role_of(messages[i]) == "user":
            return i
    return None


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


def history_dicts(messages: list[Any], start_turn: int, default_role: str = "user") -> Iterator[tuple[int, dict[str, Any], str]]:
    """(turn, wire dict, role) of each message after the leading system/developer ones (the cached
    prefix memory does not store); a typed message is read as its wire form, a string as a user
    message (a Responses item), anything else skipped."""
    prefix = True
    for i, raw in enumerate(messages):
        raw = raw.wire() if hasattr(raw, "wire") else {"role": "user", "content": raw} if isinstance(raw, str) else raw
        if not isinstance(raw, dict):
            continue
        role = str(raw.get("role") or default_role)
        if prefix and role in ("system", "developer"):
            continue
        prefix = False
        yield start_turn + i, raw, role


def path_of(path: str) -> str:
    """A request path without its query and trailing slash."""
    return path.split("?", 1)[0].rstrip("/")


class Dialect:
    """One API: where a body keeps its history (``history_key``), its typed request and message models,
    how one history entry reads for the conversation walk (:meth:`entry`), its tool calls, its validator
    rules (:meth:`check`), its stream assembler, where memory goes (:meth:`inject`), its token walk
    (:meth:`message_tokens`), and what the stages and the replay ask of it. One instance per API
    (``dialects.dialect(api)``); code that needs any of these asks the dialect instead of branching on
    :class:`ApiKind`."""

    kind: ApiKind
    history_key = "messages"  # or the Responses API's "input"
    request_model: type[WireModel]
    message_model: type[WireModel] | None = None  # the typed history entry (None: entries stay the client's dicts)
    assembler: type  # the stream assembler (contextwarden.wire.streams): the assistant's turn from the response
    endpoint: tuple[str, str]  # a default (host, path) of the API (in-process replay and evaluations)
    request_defaults: tuple[tuple[str, Any], ...] = ()  # fields a minimal request needs besides model and history
    system_key: str | None = None  # the request's top-level instructions (Anthropic ``system``, Responses ``instructions``)
    cache_breakpoints = False  # prompt caching by ``cache_control`` breakpoints (cost.PromptCache bills it)
    tool_frame = TOOL_CALL_OVERHEAD  # tokens around a tool call or result (Anthropic's differ)
    thinking_dropped = False  # the provider drops earlier turns' thinking blocks for some models (tokens.strips_thinking)
    websocket = False  # the API has a WebSocket transport (each client ``response.create`` message is a request)
    count_tokens: str | None = None  # the last path segment of the API's token count endpoint (apis.route)
    # where tool calls and results sit (clearing's slot finders): "blocks" of typed messages (tool_use,
    # tool_result), "messages" (assistant ``tool_calls``, ``role: tool`` answers) or input "items"
    tool_results = "messages"

    def __repr__(self) -> str:
        return f"<dialect {self.kind.value}>"

    # ------------------------------------------------------------------ routes

    def serves(self, path: str, ollama: bool) -> bool:
        """Whether a POST to ``path`` (no query, no trailing slash) is this API's (``ollama``: the host is
        an Ollama host, or the proxy a reverse proxy)."""
        raise NotImplementedError

    def known_host(self, host: str, hostport: str, proxy: Any, ollama: bool) -> bool:
        """Whether a request of this API to ``host`` is ours (``proxy``: the proxy settings)."""
        known = proxy.openai_hosts + proxy.openai_compatible_hosts + proxy.ollama_hosts
        return host in known or hostport in known

    # ------------------------------------------------------------------ the body

    def body(self, history: list[Any], model: str, **extra: Any) -> dict[str, Any]:
        """A minimal request body of this API around ``history`` (replay, evaluations)."""
        return {"model": model, **dict(self.request_defaults), self.history_key: history, **extra}

    def messages_of(self, body: Any) -> list[Any] | None:
        """The history list of a wire dict or a typed request; None when absent or not a list."""
        v = body.get(self.history_key) if isinstance(body, dict) else getattr(body, self.history_key, None)
        return v if isinstance(v, list) else None

    def parse(self, body: dict[str, Any]) -> WireModel:
        """The typed request of a decoded JSON body."""
        return self.request_model.model_validate(body)

    def typed_entry(self, m: Any) -> Any:
        """One history entry as the typed request holds it (the client's dict where there is no model)."""
        return self.message_model.model_validate(m) if self.message_model is not None else m

    def provider_context(self, body: dict[str, Any], known: tuple[int, int] | None = None,
                         take_over: frozenset[str] = frozenset()) -> ProviderContext:
        """What ``body`` delegates to the provider (the one decision per request: pipeline.prepare;
        ``known``: see :func:`last_index`)."""
        return NO_PROVIDER

    def new_assembler(self) -> Any:
        """A stream assembler of this API's responses (``contextwarden.wire.streams``)."""
        return self.assembler(self.kind)

    # ------------------------------------------------------------------ the conversation walk

    def entry(self, index: int, m: Any) -> Entry:
        """One wire message / input item -> its :class:`~contextwarden.wire.conversation.Entry`."""
        if not isinstance(m, dict):  # a bare string item is a user message
            return Entry(index, "user", "user", turn_start=True)
        return self.object_entry(index, m, str(m.get("role", "user")))

    def object_entry(self, index: int, m: dict[str, Any], role: str) -> Entry:
        """:meth:`entry` of a JSON object (``role``: its role, "user" when it has none)."""
        raise NotImplementedError

    def entries(self, msgs: list[Any], history: Any = None) -> list[Entry]:
        """The entries of ``msgs``; ``history``: the request's ``History`` when ``msgs`` are its original
        messages: those the previous request of the conversation had (all but its last, which a client
        that moves its cache breakpoint rewrites) are carried from it, only the new ones are read."""
        if history is None or len(history.entries) != len(msgs):
            return [self.entry(i, m) for i, m in enumerate(msgs)]
        got = history.carried(_ENTRIES)
        out: list[Entry] = got[1][:got[0]] if got is not None else []
        out += [self.entry(i, msgs[i]) for i in range(len(out), len(msgs))]
        history.carry_on(_ENTRIES, max(0, len(out) - 1), out)
        return out

    def tool_calls(self, msgs: list[Any]) -> dict[str, ToolCall]:
        """Every tool call of the history by id, in order."""
        raise NotImplementedError

    def transcript(self, msgs: list[Any], calls: dict[str, ToolCall] | None = None) -> list[Turn]:
        """The messages as role + typed parts (``calls``: the tool calls they answer, when not all in ``msgs``)."""
        return transcript(msgs, calls if calls is not None else self.tool_calls(msgs))

    # ------------------------------------------------------------------ the validator

    def check(self, new: dict[str, Any], original: dict[str, Any], original_raw: list[bytes] | None = None,
              raw: list[bytes | None] | None = None, facts: FactCache | None = None,
              checkpoints: Checkpoints | None = None) -> list[Problem]:
        """The validator's rules: the problems of ``new`` against ``original``."""
        raise NotImplementedError

    def validate(self, new: Any, original: Any, original_raw: list[bytes] | None = None,
                 raw: list[bytes | None] | None = None, facts: FactCache | None = None,
                 checkpoints: Checkpoints | None = None, fixed: int = 0) -> list[str]:
        """Problems of the rewritten body ``new`` compared with the client's ``original`` (empty = valid).

        ``original_raw``: ``orjson.dumps`` of each of the original's messages, when the caller has them: a
        message of ``new`` equal to the original's at the same index (or the same index from the end) is
        looked up under those bytes instead of being dumped again. ``raw``: the same for ``new``'s messages
        where the caller knows them (None elsewhere). ``facts`` (the runtime's) and ``checkpoints`` (the
        conversation's) remember what earlier checks found; without them the check starts cold. ``fixed``:
        the first history entries are the provider's (up to its latest compaction block or item:
        ProviderContext.boundary) and must be the original's, as they came. A defect the original has too
        is not reported: the validator judges the rewrite, not the client."""
        if not isinstance(new, dict):
            return ["rewritten body is not a JSON object"]
        if not isinstance(original, dict):
            original = {}
        try:
            found = self.check(new, original, original_raw, raw, facts, checkpoints)
        except Exception as e:  # a body shaped so oddly that checking it fails is not sent
            return [f"validator could not read the rewritten body: {type(e).__name__}: {e}"]
        hk = self.history_key
        if fixed and (new.get(hk) or [])[:fixed] != (original.get(hk) or [])[:fixed]:
            found = [*found, (("provider-prefix",), f"{hk}[:{fixed}] (up to the provider's latest compaction) differ from the original's")]
        if not found:
            return []
        try:
            inherited = {k for k, _ in self.check(original, original)}
        except Exception:
            inherited = set()
        return [msg for key, msg in found if key not in inherited]

    # ------------------------------------------------------------------ memory

    def injectable(self, req: Any) -> None:
        """Raise :class:`NotInjectable` when ``req`` has no cache-safe place for memory (checked
        before retrieval, so a tool loop does not pay for a search it cannot use)."""
        raise NotImplementedError

    def inject(self, req: Any, block: str) -> str:
        """Append ``block`` to ``req``'s last user message (an edited copy put in its place). Returns where
        it went; raises ``NotInjectable`` when there is no cache-safe place."""
        raise NotImplementedError

    def item_texts(self, m: Any, out: list[Any]) -> None:
        """Appends to ``out`` the texts of a history entry a stored memory item could equal."""
        raise NotImplementedError

    def memory_items(self, messages: Any, start_turn: int, clean_text: dict[int, str], add: Callable[..., Any]) -> None:
        """Calls ``add(text, turn, role, kind, tool)`` for each item a history holds: a message's text and
        each tool result (memory.ingest.items_from_messages)."""
        raise NotImplementedError

    def answer_messages(self, message: dict[str, Any]) -> list[Any]:
        """The history entries an answer (``AssembledTurn.message``) adds."""
        return [message]

    # ------------------------------------------------------------------ clearing's edits

    def edited(self, m: Any, edit: dict[tuple[Any, ...], Any]) -> Any:
        """A copy of typed message ``m`` with clearing's recorded stubs in place (``edit``: ("r", i) a
        tool result's new content, ("i", i) / ("a", i) a tool call's new input / arguments; ("c", i) block
        i's cache breakpoint)."""
        raise NotImplementedError

    def locked_inputs(self, req: Any, history: Any = None) -> set[int]:
        """History indexes whose tool inputs stay as sent (beyond the model's last message); ``history``:
        the request's History (per-message results remembered with its messages)."""
        return set()

    def turn_breakpoints(self, req: Any, history: Any, turns: int, boundary: int) -> dict[int, dict[tuple[Any, ...], Any]]:
        """The breakpoints stage's edits (for :meth:`edited`): a cache breakpoint on the messages that start
        the last ``turns`` turns, from message ``boundary`` on. None for an API that caches without them."""
        return {}

    # ------------------------------------------------------------------ texts and messages

    def text_of(self, m: Any) -> str:
        """A (typed) history entry's plain text: what strip cleans."""
        raise NotImplementedError

    def rewrite_text(self, m: Any, fn: Callable[[str], str | None]) -> Any:
        """strip: a copy of a user message with ``fn`` applied to its texts (None: unchanged)."""
        raise NotImplementedError

    def summary_message(self, text: str, cache_control: dict[str, Any] | None = None) -> Any:
        """compaction: its summary as a user message (``cache_control``: Anthropic's breakpoint)."""
        return {"role": "user", "content": text}

    def auth_header(self, api_key: str) -> tuple[str, str]:
        """The header that carries an API key (replay and evaluations)."""
        return ("authorization", f"Bearer {api_key}")

    def reply(self, text: str) -> dict[str, Any]:
        """An assistant answer of plain text, as the API returns it (replayed turns)."""
        return {"role": "assistant", "content": text}

    def error_answer(self, message: str, stream: bool, kind: str = "rate_limit") -> tuple[bytes, dict[str, str]]:
        """(body, headers) of an error in the API's own format (``kind``: "rate_limit" or "upstream";
        ``stream``: as the client reads a stream)."""
        raise NotImplementedError

    def summary_request(self, auth: dict[str, Any], model: str, prompt: str, text: str, max_tokens: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """compaction's LLM summary (summarise.llm_summary): the body and headers of a one-off request."""
        raise NotImplementedError

    def summary_route(self, path: str) -> tuple[str, ApiKind]:
        """Where that request goes: (path, API of it); the client's own endpoint unless the API says otherwise."""
        return path, self.kind

    # ------------------------------------------------------------------ tokens

    def message_tokens(self, tc: Counter, m: dict[str, Any], enc: Any) -> int:
        """(TokenCounter, a wire message, encoding): its tokens."""
        raise NotImplementedError
