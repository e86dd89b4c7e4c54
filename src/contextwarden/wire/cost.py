"""What a sequence of requests would be billed under Anthropic's prompt-caching rules.

The model (Anthropic's documented behaviour):

- A prompt is tools, then system, then messages, cut into content blocks. A ``cache_control`` marker on
  a block is a breakpoint: the prefix up to and including that block is written to the cache (if it
  is at least the model's minimum cacheable length) and lives 5 minutes (``ttl: "1h"``: an hour) from
  its last use; a read refreshes it.
- A later request reads the longest prefix that is cached: for each breakpoint, the boundaries from it
  back to 20 blocks before it are looked up. Tokens up to the read point are billed at 0.1x the base
  input price; tokens from there to the last breakpoint are written, 1.25x (2x for a 1-hour entry);
  tokens after the last breakpoint are base input, 1x. Output is billed at the output price.
- Caches are per model; the prefix must match exactly (we hash each block without its marker, so
  moving a breakpoint does not change the cached content).
- Models before Claude Opus 4.5 drop the thinking blocks of earlier turns from the prompt: once a new
  user message arrives, everything after the first dropped thinking block is a different prefix and is
  written again (the trace's own usage shows exactly these re-writes).
- With server-side compaction the API drops every message block before the latest ``compaction`` block;
  the compaction itself is billed apart (``usage.iterations``: :func:`provider_compaction`).

Token counts come from :class:`contextwarden.wire.tokens.TokenCounter`, times an optional ``factor``
(the provider/estimate ratio, so that dollars are in the provider's tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from hashlib import blake2b
from typing import Any

import orjson

from .dialects import ANTHROPIC
from .dialects.base import MESSAGE_OVERHEAD
from .tokens import REQUEST_OVERHEAD, current_turn_start, strips_thinking

TTL_5M = 300.0
TTL_1H = 3600.0
READ_MULT = 0.1
WRITE_MULT = {TTL_5M: 1.25, TTL_1H: 2.0}
LOOKBACK_BLOCKS = 20


@dataclass(frozen=True)
class Price:
    """Dollars per million tokens, the shortest prefix the model caches, and what a cached input token
    (``read``) and a token written to the cache (``write``, 5-minute entries) cost as fractions of an
    uncached one."""

    input: float
    output: float
    min_cache: int = 1024
    read: float = READ_MULT
    write: float = WRITE_MULT[TTL_5M]

    @classmethod
    def of_turn(cls, data: dict[str, Any]) -> Price | None:
        """The price a ``turn`` event carries (None: nobody priced its model); an event from before turns
        carried one: the table's price of its model."""
        if "price" not in data:
            return known_price(data.get("model"))
        try:
            return cls(**data["price"]) if isinstance(data["price"], dict) else None
        except TypeError:  # (not a price's fields)
            return None


def _openai(input: float, output: float, read: float) -> Price:
    """An OpenAI model's price: automatic caching from 1,024 tokens, no write premium."""
    return Price(input, output, 1024, read, 1.0)


# model-name prefix -> price (looked up longest prefix first)
PRICES: dict[str, Price] = {
    "claude-opus-4-5": Price(5, 25, 4096), "claude-opus-4-6": Price(5, 25, 4096),
    "claude-opus-4-7": Price(5, 25, 4096), "claude-opus-4-8": Price(5, 25, 4096),
    "claude-opus-4": Price(15, 75, 1024),  # Opus 4 and 4.1
    "claude-sonnet-4-6": Price(3, 15, 2048), "claude-sonnet-4": Price(3, 15, 1024),  # Sonnet 4 and 4.5
    "claude-3-7-sonnet": Price(3, 15, 1024), "claude-3-5-sonnet": Price(3, 15, 1024),
    "claude-haiku-4-5": Price(1, 5, 4096), "claude-3-5-haiku": Price(0.8, 4, 2048),
    "claude-3-haiku": Price(0.25, 1.25, 2048), "claude-3-opus": Price(15, 75, 1024),
    # OpenAI: cached input at 0.1x (GPT-5), 0.25x (GPT-4.1, o3, o4-mini), 0.5x (GPT-4o)
    "gpt-5": _openai(1.25, 10, 0.1), "gpt-5-mini": _openai(0.25, 2, 0.1),
    "gpt-5-nano": _openai(0.05, 0.4, 0.1), "gpt-5-codex-mini": _openai(0.25, 2, 0.1),
    "gpt-5-pro": _openai(15, 120, 1.0), "gpt-5.1": _openai(1.25, 10, 0.1),
    "gpt-5.1-codex-mini": _openai(0.25, 2, 0.1), "codex-mini": _openai(1.5, 6, 0.25),
    "gpt-4.1": _openai(2, 8, 0.25), "gpt-4.1-mini": _openai(0.4, 1.6, 0.25),
    "gpt-4.1-nano": _openai(0.1, 0.4, 0.25), "o3": _openai(2, 8, 0.25), "o3-pro": _openai(20, 80, 1.0),
    "o3-mini": _openai(1.1, 4.4, 0.5), "o4-mini": _openai(1.1, 4.4, 0.25),
    "gpt-4o": _openai(2.5, 10, 0.5), "gpt-4o-mini": _openai(0.15, 0.6, 0.5),
}
DEFAULT_PRICE = Price(3, 15, 1024)

#: (cache read, cache write) price factors relative to uncached input, by API (``ApiKind`` value), for a
#: model the price table does not know: what compaction's cost model weighs a re-written prefix with.
CACHE_FACTORS: dict[str, tuple[float, float]] = {
    "anthropic": (READ_MULT, WRITE_MULT[TTL_5M]),
    "openai_chat": (0.5, 1.0),
    "openai_responses": (0.5, 1.0),
    "ollama_chat": (0.1, 1.0),  # no price; prefill reuse of the KV cache, roughly
}


def cache_factors(api: Any, model: str | None = None, own: Mapping[str, Any] | None = None) -> tuple[float, float]:
    """(cache read, cache write) price factors relative to uncached input: ``model``'s when the price
    table (or ``own``: see known_price) knows it, else ``api``'s (an ApiKind or its value; Anthropic's for
    an API not in the table)."""
    price = known_price(model, own)
    return (price.read, price.write) if price else CACHE_FACTORS.get(getattr(api, "value", api), CACHE_FACTORS["anthropic"])


def number(v: Any) -> float:
    """``v`` when it is a JSON number (bool is an int in Python), else 0."""
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else 0


def number_or_none(v: Any) -> float | None:
    """``v`` when it is a JSON number, else None (an absent figure, not a zero)."""
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


_COUNTS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def provider_compaction(usage: dict[str, Any] | None) -> dict[str, int]:
    """The provider's own compaction in a response's usage: its ``iterations`` entries of type
    ``compaction`` summed (Anthropic: "A compaction entry's tokens are not included in the top-level
    usage fields"; billed like any sampling). Empty when there was none."""
    its = (usage or {}).get("iterations")
    comp = [i for i in its if isinstance(i, dict) and i.get("type") == "compaction"] if isinstance(its, list) else []
    return {k: int(sum(number(i.get(k)) for i in comp)) for k in _COUNTS} | {"iterations": len(comp)} if comp else {}


def billed_units(usage: dict[str, Any], price: Price = DEFAULT_PRICE) -> float:
    """Input units a response's reported usage was billed, in uncached-input tokens: input 1x, cache
    writes and reads at ``price``'s factors (Anthropic's 1.25x and 0.1x by default), the provider's
    compaction iterations included. Fields that are not numbers count 0."""

    def units(u: dict[str, Any]) -> float:
        return (number(u.get("input_tokens")) + price.write * number(u.get("cache_creation_input_tokens"))
                + price.read * number(u.get("cache_read_input_tokens")))

    comp = provider_compaction(usage)
    return units(usage) + (units(comp) if comp else 0)


def known_price(model: str | None, own: Mapping[str, Any] | None = None) -> Price | None:
    """The price of the longest name in ``own`` (the user's prices: settings ``prices``), else in the table,
    that ``model`` starts with, followed by nothing or a suffix (``-codex``, a date), not by a version
    (``gpt-5`` is not ``gpt-5.2``'s price); None if none."""
    m = (model or "").lower().split("/")[-1]
    for table in (own or {}, PRICES):
        for prefix in sorted(table, key=len, reverse=True):  # (the table as it is now: a test may add to it)
            after = m[len(prefix):len(prefix) + 1]  # ("" at the name's end)
            if m.startswith(prefix.lower()) and not after.isdigit() and after != ".":
                p = table[prefix]
                return p if isinstance(p, Price) else Price(**dict(p))  # (a settings section: its fields)
    return None


def price_for(model: str | None, own: Mapping[str, Any] | None = None) -> Price:
    return known_price(model, own) or DEFAULT_PRICE


@dataclass
class Boundary:
    key: bytes  # hash of the prompt up to and including this block
    cum: int  # tokens up to and including this block
    ttl: float | None  # this block carries a breakpoint with this lifetime
    at: tuple[int, int] | None = None  # a message block's (message, block) index (None: a tool, the system)


@dataclass
class Bill:
    """One request's billed tokens and dollars."""

    tokens: int = 0
    read: int = 0
    write: int = 0  # 5-minute and 1-hour writes together
    uncached: int = 0
    output: int = 0
    input_cost: float = 0.0
    output_cost: float = 0.0

    @property
    def cost(self) -> float:
        return self.input_cost + self.output_cost

    def add(self, other: Bill) -> None:
        for k in ("tokens", "read", "write", "uncached", "output", "input_cost", "output_cost"):
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cost": self.cost}


def _ttl_of(block: Any) -> float | None:
    cc = block.get("cache_control") if isinstance(block, dict) else None
    if not isinstance(cc, dict):
        return None
    return TTL_1H if str(cc.get("ttl", "")).lower() in ("1h", "3600", "3600s") else TTL_5M


def _without_cc(block: Any) -> Any:
    if isinstance(block, dict) and "cache_control" in block:
        return {k: v for k, v in block.items() if k != "cache_control"}
    return block


def boundaries(body: dict[str, Any], counter, model: str | None = None, factor: float = 1.0) -> list[Boundary]:
    """The cache boundaries of an Anthropic request: one per tool, system block and message block."""
    model = model or body.get("model")
    out: list[Boundary] = []
    h = b""
    cum = float(REQUEST_OVERHEAD)

    def push(part: bytes, block: Any, tokens: int, at: tuple[int, int] | None = None) -> None:
        nonlocal h, cum
        h = blake2b(h + part + orjson.dumps(_without_cc(block), option=orjson.OPT_SORT_KEYS, default=str),
                    digest_size=16).digest()
        cum += tokens * factor
        out.append(Boundary(h, int(round(cum)), _ttl_of(block), at))

    tools = body.get("tools")
    if isinstance(tools, list):
        for t in tools:
            push(b"T", t, counter.count_tools([t], model))
    system = body.get("system")
    if isinstance(system, str) and system:
        push(b"S", {"type": "text", "text": system}, counter.count_system(ANTHROPIC, system, model))
    elif isinstance(system, list):
        for i, b in enumerate(system):
            push(b"S", b, counter.count_block(ANTHROPIC, b, model) + (MESSAGE_OVERHEAD if i == 0 else 0))
    msgs = body.get("messages") or []
    # the provider drops every block before the latest compaction block (not billed, not cached), and
    # earlier turns' thinking unless a clear_thinking edit keeps "all"
    pc = ANTHROPIC.provider_context(body)
    strip_before = current_turn_start(msgs) if strips_thinking(model) and not pc.keeps_thinking else 0
    for k, m in enumerate(msgs):
        if k < pc.dropped or not isinstance(m, dict):
            continue
        role = str(m.get("role")).encode()
        content = m.get("content")
        blocks = list(enumerate([{"type": "text", "text": content}] if isinstance(content, str) else
                                (content if isinstance(content, list) else [])))
        if k < strip_before and m.get("role") == "assistant":
            blocks = [(bi, b) for bi, b in blocks if not (isinstance(b, dict) and b.get("type") in ("thinking", "redacted_thinking"))]
        for i, (bi, b) in enumerate(blocks):
            tokens = counter.count_block(ANTHROPIC, b, model) + (MESSAGE_OVERHEAD if i == 0 else 0)
            push(b"M" + role if i == 0 else b"B", b, tokens, (k, bi))
    return out


@dataclass
class PromptCache:
    """The provider's prompt cache as seen by one organisation: entries per model, with expiry times."""

    lookback: int = LOOKBACK_BLOCKS
    entries: dict[tuple[str, bytes], float] = field(default_factory=dict)
    prices: Mapping[str, Any] = field(default_factory=dict)  # the user's (see known_price)

    def bill(self, bounds: list[Boundary], ts: float, model: str | None, output_tokens: int = 0) -> Bill:
        """Bill one request sent at ``ts`` (seconds) and update the cache as the provider would."""
        price = price_for(model, self.prices)
        mkey = (model or "").lower()
        total = bounds[-1].cum if bounds else 0
        bill = Bill(tokens=total, output=output_tokens)
        bps = [i for i, b in enumerate(bounds) if b.ttl is not None]
        read_at = -1
        for bp in reversed(bps):
            for j in range(bp, max(-1, bp - self.lookback - 1), -1):
                if j <= read_at:
                    break
                if (exp := self.entries.get((mkey, bounds[j].key))) is not None and exp >= ts:  # a live entry
                    read_at = j
                    break
            if read_at >= 0:
                break
        read = bounds[read_at].cum if read_at >= 0 else 0
        # writes: from the read point to each later breakpoint whose prefix is long enough to cache
        written_to, write_cost, write = read_at, 0.0, 0
        for bp in bps:
            if bp <= written_to or bounds[bp].cum < price.min_cache:
                continue
            span = bounds[bp].cum - (bounds[written_to].cum if written_to >= 0 else 0)
            write += span
            write_cost += span * WRITE_MULT[bounds[bp].ttl or TTL_5M]
            written_to = bp
        uncached = total - read - write
        bill.read, bill.write, bill.uncached = read, write, uncached
        bill.input_cost = (read * price.read + write_cost + uncached) * price.input / 1e6
        bill.output_cost = output_tokens * price.output / 1e6
        # the provider's side effects: the read entry is refreshed, every cacheable breakpoint written
        if read_at >= 0:
            self._touch(mkey, bounds[read_at].key, ts, self._ttl_at(bounds, read_at, bps))
        for bp in bps:
            if bounds[bp].cum >= price.min_cache:
                self._touch(mkey, bounds[bp].key, ts, bounds[bp].ttl or TTL_5M)
        return bill

    @staticmethod
    def _ttl_at(bounds: list[Boundary], i: int, bps: list[int]) -> float:
        return bounds[i].ttl or next((t for b in bps if b >= i and (t := bounds[b].ttl)), TTL_5M)

    def _touch(self, mkey: str, key: bytes, ts: float, ttl: float) -> None:
        exp = ts + ttl
        if self.entries.get((mkey, key), 0) < exp:
            self.entries[(mkey, key)] = exp


def billed_from_usage(usage: dict[str, Any] | None, price: Price) -> Bill:
    """What a response's reported usage cost at ``price`` (5-minute writes assumed; the provider's
    compaction iterations included)."""
    u = usage or {}
    comp = provider_compaction(u)  # (the provider's compaction: billed, not in the top-level fields)
    inp, out, read, write = (int(u.get(k) or 0) + comp.get(k, 0) for k in _COUNTS)
    return Bill(tokens=inp + read + write, read=read, write=write, uncached=inp, output=out,
                input_cost=(inp + read * price.read + write * price.write) * price.input / 1e6,
                output_cost=out * price.output / 1e6)


def usage_usd(usage: dict[str, Any] | None, price: Price | None) -> float | None:
    """Dollars one call's reported usage costs at a list price (cache reads and 5-minute writes included
    when reported); ``None`` without a price (a model nobody priced: no guessing)."""
    if not usage or price is None:
        return None
    return billed_from_usage(usage, price).cost
