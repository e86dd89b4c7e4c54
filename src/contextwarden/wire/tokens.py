"""Token accounting: tiktoken counts cached per content hash, and a per-model calibration.

A message's count is cached under a hash of its content (blocks without their ``cache_control``), so a
repeat request tokenises only its new messages. OpenAI models use ``o200k_base``, every other model
``settings.tokens.encoding``; an encoding that cannot be loaded gives an estimate of
:data:`CHARS_PER_TOKEN` characters per token (said in :attr:`TokenCounter.source`, one ``error``
event; never raises). Images and base64 documents count ``settings.tokens.image_tokens`` each.

Calibration: no local encoding is Claude's tokenizer, and providers add hidden framing. Each response
reports the true input; :meth:`TokenCounter.observe_usage` learns ``factor = EMA(provider / estimate)``
per model (runtime state, namespace ``calibration``; a ``calibration`` event) and
:meth:`TokenCounter.calibrated` turns an estimate into the provider's scale."""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from functools import partial
from operator import itemgetter
from typing import Any, TypeVar

import orjson
import tiktoken

from ..models.base import ApiKind
from ..util import last_of, rss_mb
from ..util.lru import LRU, memoized
from .dialects import Dialect, dialect
from .dialects.base import BLOCK_OVERHEAD, CHARS_PER_TOKEN, MESSAGE_OVERHEAD
from .validate import aligned_raw

T = TypeVar("T")
REQUEST_OVERHEAD = 3  # reply priming / request framing

OPENAI_ENCODING = "o200k_base"
_OPENAI_MODEL = re.compile(r"^(?:openai/)?(?:gpt-4o|chatgpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|gpt-oss|codex|o[134](?:$|[-_.:]))", re.I)

FACTOR_MIN, FACTOR_MAX = 0.5, 2.5  # a calibrated factor outside this range means a broken estimate, not a tokenizer
RATIO_MIN, RATIO_MAX = 0.25, 4.0  # a single observation outside this range is not learned from
EMA_ALPHA = 0.2
CAL_REFRESH_S = 5.0  # with a shared state: how often the factors other replicas learned are read

CALIBRATION_NS = "calibration"


@memoized(256)
def encoding_name_for(model: str | None, default: str) -> str:
    """The tiktoken encoding used to count ``model``'s tokens."""
    if model and _OPENAI_MODEL.match(model.strip()):
        return OPENAI_ENCODING
    return default


# the families whose earlier thinking the API drops (Claude 3 and 4), less their versions that keep it
_DROPS_THINKING = re.compile(r"claude-(?:3\b|(?:opus|sonnet|haiku)-4(?:\b|-))", re.I)
_KEEPS_THINKING = re.compile(r"claude-(?:opus-4-(?:[5-9]|1\d)|(?:sonnet|haiku)-4-(?:[6-9]|1\d))(?:\b|-)", re.I)


def strips_thinking(model: str | None) -> bool:
    """Whether Anthropic drops earlier turns' thinking blocks from the prompt for ``model``.

    Before Claude Opus 4.5 (and Sonnet/Haiku 4.6) the API removes the thinking blocks of assistant turns
    that came before the latest real user message: they are neither billed nor part of the cached
    prefix. Later models keep them. Unknown models are assumed to keep them (counts err high).
    """
    return model is not None and bool(_DROPS_THINKING.search(model)) and not _KEEPS_THINKING.search(model)


def marks(d: Dialect, model: str | None, pc: Any) -> bool:
    """Whether the ``breakpoints`` stage marks a request to ``model`` at its turn starts (the oracle bills its
    plans, and ``policy.free_from`` reads the cache, by the same rule): the provider drops the previous turn's
    thinking (else a new turn changes nothing before it), no client edit keeps it, and the provider edits nothing
    of the prompt itself (what it caches then is its own affair)."""
    return (d.thinking_dropped and strips_thinking(model) and not pc.keeps_thinking
            and not (pc.clears_tool_uses or pc.clears_thinking or pc.compacts))


def starts_turn(m: Any) -> bool:
    """Whether ``m`` is a user message that is not only tool results (a turn begins there)."""
    if not isinstance(m, dict) or m.get("role") != "user":
        return False
    c = m.get("content")
    return not isinstance(c, list) or any(isinstance(b, dict) and b.get("type") != "tool_result" for b in c)


def current_turn_start(messages: list[Any]) -> int:
    """Index of the latest user message that is not only tool results (where the current turn begins)."""
    return next((i for i in range(len(messages) - 1, -1, -1) if starts_turn(messages[i])), 0)


def turn_start_of(entries: list[tuple[int, int, bool]]) -> int:
    """:func:`current_turn_start` from the messages' entries (``count_request``'s: a C-speed scan)."""
    return int(last_of(list(map(itemgetter(2), entries)), True, 0))


class _Encoding:
    """One tiktoken encoding, or the reason it could not be loaded."""

    def __init__(self, name: str, timeout_s: float) -> None:
        self.name = name
        self.enc = None
        self.error: str | None = None
        box: dict[str, Any] = {}

        def load() -> None:
            try:
                box["enc"] = tiktoken.get_encoding(name)
            except BaseException as e:  # noqa: BLE001 - a download failure can raise anything
                box["error"] = f"{type(e).__name__}: {e}"

        # A download attempt without network can hang; never let it hold a request for long.
        before = rss_mb()
        t = threading.Thread(target=load, name=f"cw-tiktoken-{name}", daemon=True)
        t.start()
        t.join(timeout_s)
        after = rss_mb()
        # what loading it added to this process (cl100k_base ~46 MB, o200k_base ~69 MB)
        self.rss_mb = max(0.0, after - before) if before is not None and after is not None else 0.0
        if "enc" in box:
            self.enc = box["enc"]
        else:
            self.error = box.get("error") or f"loading took over {timeout_s:g}s"

    @property
    def source(self) -> str:
        if self.enc is not None:
            cache = os.environ.get("TIKTOKEN_CACHE_DIR")
            return f"tiktoken {self.name}" + (f" (cache {cache})" if cache else "")
        return f"estimate: {CHARS_PER_TOKEN} chars/token (tiktoken encoding {self.name} unavailable: {self.error})"

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self.enc is not None:
            # encode_ordinary: special-token text such as "<|endoftext|>" in a file is just text here
            return len(self.enc.encode_ordinary(text))
        return math.ceil(len(text) / CHARS_PER_TOKEN)


class TokenCounter:
    """Counts tokens of texts, messages and whole requests; learns per-model correction factors.

    Thread-safe: stages call it from worker threads concurrently.
    """

    def __init__(self, settings: Any, state: Any = None, bus: Any = None, soon: Any = None) -> None:
        self._cache = LRU(1000)
        self.settings = settings  # TokensSection; the runtime swaps it when settings change
        self.state = state
        self.soon = soon  # the runtime's StateCache over ``state``: calibration written with its put(soon=True)
        self.bus = bus
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._encodings: dict[str, _Encoding] = {}
        self.lookups = 0
        self.misses = 0
        self._cal: dict[str, dict[str, Any]] = {}
        self._cal_read = time.monotonic()
        if state is not None:
            with suppress(Exception):  # a damaged state file must not stop counting
                self._cal = {k: v for k, v in state.items(CALIBRATION_NS) if isinstance(v, dict) and "factor" in v}

    @property
    def settings(self) -> Any:
        return self._settings

    @settings.setter
    def settings(self, s: Any) -> None:
        self._settings = s
        self._cache.max_size = max(1000, s.cache_entries)

    # ------------------------------------------------------------------ encodings

    def encoding_of(self, model: str | None) -> str:
        """The name of the encoding ``model``'s tokens are counted with."""
        name: str = encoding_name_for(model, self.settings.encoding)
        return name

    def _encoding(self, model: str | None) -> _Encoding:
        name = encoding_name_for(model, self.settings.encoding)
        enc = self._encodings.get(name)
        if enc is not None:
            return enc
        with self._load_lock:
            enc = self._encodings.get(name)
            if enc is None:
                enc = _Encoding(name, self.settings.load_timeout_s)
                self._encodings[name] = enc
                if enc.enc is None and self.bus is not None:
                    self.bus.emit("error", {"where": "tokens", "message": enc.source,
                                            "action": f"estimating {CHARS_PER_TOKEN} chars/token"})
        return enc

    @property
    def loaded_mb(self) -> float:
        """What the encodings loaded so far added to this process's RSS (MB)."""
        return sum(e.rss_mb for e in list(self._encodings.values()))

    @property
    def source(self) -> str:
        """How counts for non-OpenAI models are made: ``tiktoken cl100k_base ...`` or ``estimate: ...``."""
        return self._encoding(None).source

    def source_for(self, model: str | None) -> str:
        return self._encoding(model).source

    # ------------------------------------------------------------------ cache

    def _cached(self, key: tuple[Any, ...], compute: Callable[[], T]) -> T:
        self.lookups += 1
        v: T = self._cache.get(key, self._miss, compute)
        return v

    def _miss(self, compute: Callable[[], T]) -> T:
        self.misses += 1
        return compute()

    @staticmethod
    def _key(kind: bytes, enc: _Encoding, data: bytes | str) -> tuple[Any, ...]:
        # Python's keyed 64-bit SipHash plus the length: a collision needs two different contents of
        # the same length and the same hash under this process's random key (a count is an estimate;
        # even then only one message would be off). Much cheaper than a cryptographic digest, and a
        # str caches its hash, so the same text object is hashed once.
        return (kind, enc.name, len(data), hash(data))

    @staticmethod
    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS, default=str)

    def forget(self) -> None:
        """Drop the remembered counts (an idle proxy's: each conversation's next request counts again)."""
        self._cache.clear()

    def cache_info(self) -> dict[str, int]:
        return {"entries": len(self._cache), "hits": self.lookups - self.misses, "misses": self.misses}

    # ------------------------------------------------------------------ public counting

    def count_text(self, text: str | None, model: str | None = None) -> int:
        """Tokens of a plain text (long texts are cached by hash)."""
        if not text:
            return 0
        return self._text(text if isinstance(text, str) else str(text), self._encoding(model))

    def count_message(self, api: ApiKind | str | Dialect, message: Any, model: str | None = None) -> int:
        """Tokens of one message (or Responses input item), cached by a hash of its content."""
        d, m, enc = dialect(api), _plain(message), self._encoding(model)
        return self._cached(self._key(b"M" + d.kind.value.encode(), enc, self._dumps(m)), partial(self._entry, d, m, enc))[0]

    def _entry(self, d: Dialect, m: Any, enc: _Encoding) -> tuple[int, int, bool]:
        """(tokens, tokens of its thinking blocks, whether a turn starts there) of one message: kept with
        the count so that a request whose model drops earlier turns' thinking (:func:`strips_thinking`)
        needs no second pass over the messages."""
        return self._message(d, m, enc), self._thinking(d, m, enc), starts_turn(m)

    def _thinking(self, d: Dialect, m: Any, enc: _Encoding) -> int:
        if not d.thinking_dropped or not isinstance(m, dict) or m.get("role") != "assistant" \
                or not isinstance(m.get("content"), list):
            return 0
        return sum(self._block(d, b, enc) for b in m["content"]
                   if isinstance(b, dict) and b.get("type") in ("thinking", "redacted_thinking"))

    def count_request(self, api: ApiKind | str | Dialect, body: Any, model: str | None = None, *,
                      reuse: tuple[Any, ...] | None = None, keep: list[Any] | None = None,
                      raw: list[bytes | None] | None = None, known: list[Any] | None = None,
                      fixed: tuple[Any, ...] | None = None) -> int:
        """Tokens of a whole request body: system + tools + messages, plus framing.

        A repeat request costs one ``orjson.dumps`` and one (non-cryptographic) hash per message plus
        tokenising only the messages not seen before. ``keep`` (a list) receives ``(messages, entries)``
        of this body; passing that as ``reuse`` when counting a rewrite of the same body counts the
        messages equal to the original's (same index, or same index from the end) without even that.
        ``raw``: each message's JSON bytes when the caller has them (the pipeline does), used as the
        cache key instead of dumping the message again. ``known``: each message's entry when the
        caller remembers it (None where not); ``keep`` then holds them all, to remember.
        The framing, tools and system are not counted again for a rewrite that keeps the original's
        own ``tools`` and ``system`` objects, nor for a body holding the very objects of an earlier
        one (``fixed``: that body's ``keep[0][2]``; prefixparse hands a conversation's next body them).
        """
        body = _plain(body)
        if not isinstance(body, dict):
            return 0
        if model is None and isinstance(body.get("model"), str):
            model = body["model"]
        enc = self._encoding(model)
        tools = body.get("tools")
        d = dialect(api)
        system = body.get(d.system_key) if d.system_key is not None else None
        fixed = reuse[2] if reuse is not None else fixed
        if fixed is not None and fixed[0] is tools and fixed[1] is system and fixed[2] is enc:
            n: int = fixed[3]  # the original's own tools and system objects: counted already
        else:
            n = REQUEST_OVERHEAD + self._tools(tools, enc) + self._system(d, system, enc)
        fixed = (tools, system, enc, n)
        msgs = body.get(d.history_key)
        if isinstance(msgs, str):  # (a Responses ``input`` may be one string)
            n += MESSAGE_OVERHEAD + self.count_text(msgs, model)
        elif isinstance(msgs, list):
            entries = self._entries(d, msgs, enc, reuse, raw, known)
            if keep is not None:
                keep.append((msgs, entries, fixed))
            n += sum(map(itemgetter(0), entries))
            if d.thinking_dropped and strips_thinking(model) and any(map(itemgetter(1), entries)):
                # earlier turns' thinking blocks, which the provider drops
                n -= sum(map(itemgetter(1), entries[:turn_start_of(entries)]))
        return n

    def _entries(self, d: Dialect, msgs: list[Any], enc: _Encoding, reuse: tuple[Any, ...] | None,
                 raw: list[bytes | None] | None = None, known: list[Any] | None = None) -> list[tuple[int, int, bool]]:
        """:meth:`_message_entry` of every message (keyed by ``raw``'s bytes where the caller has them)."""
        out: list[Any] = list(known) if known is not None and len(known) == len(msgs) else \
            aligned_raw(msgs, reuse[0], reuse[1]) if reuse is not None else [None] * len(msgs)
        kind = b"M" + d.kind.value.encode()
        opt = orjson.OPT_SORT_KEYS
        if raw is not None and len(raw) == len(msgs):
            kind, opt = b"R" + kind, 0  # (a message without bytes: the same key, from a dump)
        else:
            raw = None
        young = self._cache.young  # (a hit there without a call: most messages of a repeat request)
        for i in _missing(out):
            m = msgs[i]
            data = raw[i] if raw is not None else None
            if data is None:
                data = orjson.dumps(m := _plain(m), option=opt, default=str)
            key = (kind, enc.name, len(data), hash(data))
            v = young.get(key)
            out[i] = v if v is not None else self._cached(key, partial(self._entry, d, _plain(m), enc))
            self.lookups += v is not None
        return out

    def count_block(self, api: ApiKind | str | Dialect, block: Any, model: str | None = None) -> int:
        """Tokens of one content block / content part (cached, ``cache_control`` ignored)."""
        return self._block(dialect(api), _plain(block), self._encoding(model))

    def count_tools(self, tools: Any, model: str | None = None) -> int:
        """Tokens of a request's tool definitions (cached by their bytes)."""
        return self._tools(_plain(tools), self._encoding(model))

    def count_system(self, api: ApiKind | str | Dialect, system: Any, model: str | None = None) -> int:
        """Tokens of an Anthropic ``system`` (string or blocks) or a Responses ``instructions``."""
        return self._system(dialect(api), system, self._encoding(model))

    # ------------------------------------------------------------------ calibration

    def factor(self, model: str | None) -> float:
        """The learned provider/estimate ratio for ``model`` (1.0 until something was learned)."""
        if not self.settings.calibrate:
            return 1.0
        if getattr(self.state, "shared", False) and time.monotonic() - self._cal_read > CAL_REFRESH_S:
            self._cal_read = time.monotonic()  # what other replicas learned
            with suppress(Exception):  # down: keep what this replica knows
                self._cal.update({k: v for k, v in self.state.items(CALIBRATION_NS) if isinstance(v, dict) and "factor" in v})
        rec = self._cal.get(model or "unknown")
        return float(rec["factor"]) if rec else 1.0

    def calibrated(self, model: str | None, n: int | None) -> int:
        """An estimate converted to the provider's count for ``model``."""
        if not n:
            return 0
        return int(round(n * self.factor(model)))

    def calibration(self) -> dict[str, dict[str, Any]]:
        """Every model's calibration record (factor, observations, last estimate and provider figure)."""
        with self._lock:
            return {k: dict(v) for k, v in self._cal.items()}

    def observe_usage(self, model: str | None, estimate: int | None, usage: Any, *, flow_id: str | None = None,
                      session: str | None = None) -> float | None:
        """Learn from one response: the provider's true input vs our estimate of what was sent.

        Returns the new factor, or None when nothing could be learned (no estimate, no usage).
        """
        provider = usage.total_input if usage is not None else None  # (a streams.turn.Usage)
        if not self.settings.calibrate or not estimate or estimate <= 0 or not provider or provider <= 0:
            return None
        key = model or "unknown"
        ratio = provider / estimate
        applied = RATIO_MIN <= ratio <= RATIO_MAX
        now = time.time()

        def learn(cur: dict[str, Any] | None) -> dict[str, Any]:
            rec = dict(cur or {"factor": 1.0, "n": 0})
            if applied:
                f = ratio if rec["n"] == 0 else (1 - EMA_ALPHA) * rec["factor"] + EMA_ALPHA * ratio
                rec["factor"] = min(FACTOR_MAX, max(FACTOR_MIN, f))
                rec["n"] += 1
            rec.update(last_estimate=int(estimate), last_provider=int(provider), updated=now)
            return rec

        with self._lock:
            rec = self._cal[key] = learn(self._cal.get(key))
        if self.state is not None:
            try:
                if getattr(self.state, "shared", False):  # replicas learn into one record
                    rec = self.state.update(CALIBRATION_NS, key, learn)
                    with self._lock:
                        self._cal[key] = rec
                elif self.soon is not None:  # (one a response: not on the turn's clock, the store's lock is every request's)
                    self.soon.put(CALIBRATION_NS, key, rec, soon=True)
                else:
                    self.state.put(CALIBRATION_NS, key, rec)
            except Exception as e:  # a closed or locked state file must not lose the response
                if self.bus is not None:
                    self.bus.emit("error", {"where": "tokens", "message": f"calibration not saved: {e}"})
        if self.bus is not None:
            self.bus.emit("calibration", {"model": key, "estimate": int(estimate), "provider": int(provider),
                                          "ratio": round(ratio, 4), "factor": round(rec["factor"], 4), "n": rec["n"],
                                          "applied": applied, "source": self.source_for(model)},
                          flow_id=flow_id, session=session)
        return float(rec["factor"])

    # ------------------------------------------------------------------ internals

    def _tools(self, tools: Any, enc: _Encoding) -> int:
        if not tools:
            return 0
        # tool definitions are the same bytes every request: one hash, one cached count
        data = self._dumps(tools)
        return self._cached(self._key(b"T", enc, data), lambda: enc.count(data.decode("utf-8", "replace")))

    def _system(self, d: Dialect, system: Any, enc: _Encoding) -> int:
        if not system:
            return 0
        if isinstance(system, str):
            return self._text(system, enc) + MESSAGE_OVERHEAD
        if isinstance(system, list):
            return MESSAGE_OVERHEAD + sum(self._block(d, b, enc) for b in system)
        return self._text(self._dumps(system).decode(), enc)

    def _text(self, text: Any, enc: _Encoding) -> int:
        if not text:
            return 0
        if not isinstance(text, str):
            text = self._dumps(text).decode("utf-8", "replace")
        if len(text) < 512:
            return enc.count(text)
        return self._cached(self._key(b"t", enc, text), lambda: enc.count(text))

    def _block(self, d: Dialect, b: Any, enc: _Encoding) -> int:
        """One content block / content part, cached without its cache_control marker."""
        if isinstance(b, str):
            return self._text(b, enc)
        if not isinstance(b, dict):
            return 0
        if "cache_control" in b:
            b = {k: v for k, v in b.items() if k != "cache_control"}
        t = b.get("type")
        if t == "text" or t in ("input_text", "output_text"):
            return BLOCK_OVERHEAD + self._text(b.get("text"), enc)
        key = self._key(b"b" + d.kind.value.encode(), enc, self._dumps(b))
        return self._cached(key, lambda: self._block_uncached(d, b, enc))

    def _block_uncached(self, d: Dialect, b: dict[str, Any], enc: _Encoding) -> int:
        t = b.get("type")
        img: int = self.settings.image_tokens
        if t in ("image", "image_url", "input_image"):
            return BLOCK_OVERHEAD + img
        if t == "thinking":
            return BLOCK_OVERHEAD + self._text(b.get("thinking"), enc)
        if t == "redacted_thinking":
            # encrypted: only its size is known
            return BLOCK_OVERHEAD + math.ceil(len(str(b.get("data", ""))) / CHARS_PER_TOKEN)
        frame = d.tool_frame
        if t in ("tool_use", "server_tool_use"):
            return frame + self._text(b.get("name"), enc) + self._text(b.get("input"), enc)
        if isinstance(t, str) and (t == "tool_result" or t.endswith("_tool_result")):
            return frame + self._content(d, b.get("content"), enc)
        if t == "document" or t == "input_file":
            src: dict[str, Any] = b["source"] if isinstance(b.get("source"), dict) else {}
            if src.get("type") == "text":
                return BLOCK_OVERHEAD + self._text(src.get("data"), enc)
            if src.get("type") == "content" and isinstance(src.get("content"), list):
                return BLOCK_OVERHEAD + sum(self._block(d, x, enc) for x in src["content"])
            return BLOCK_OVERHEAD + img
        if isinstance(b.get("source"), dict) and b["source"].get("type") == "base64":
            return BLOCK_OVERHEAD + img
        # unknown block: its JSON is the best guess of what the model reads
        return BLOCK_OVERHEAD + self._text(self._dumps(b).decode("utf-8", "replace"), enc)

    def _message(self, d: Dialect, m: Any, enc: _Encoding) -> int:
        if isinstance(m, str):
            return MESSAGE_OVERHEAD + self._text(m, enc)
        if not isinstance(m, dict):
            return 0
        return d.message_tokens(self, m, enc)

    def _content(self, d: Dialect, c: Any, enc: _Encoding) -> int:
        if isinstance(c, list):
            return sum(self._block(d, b, enc) for b in c)
        return self._text(c, enc)  # (a string; None and empty count 0)


def _missing(xs: list[Any]) -> Iterator[int]:
    """The indexes of ``xs`` that hold None (found by ``list.index``, at C speed: a repeat request's
    messages are nearly all known)."""
    i = -1
    while True:
        try:
            i = xs.index(None, i + 1)
        except ValueError:
            return
        yield i


def _plain(obj: Any) -> Any:
    """A typed wire model as its JSON dict; anything else unchanged."""
    wire = getattr(obj, "wire", None)
    if callable(wire) and not isinstance(obj, dict):
        return wire()
    return obj
