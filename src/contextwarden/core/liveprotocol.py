"""The live protocol between the proxy and ``contextwarden tui``: the discovery file, the token header,
and the running totals both sides keep with the same arithmetic (the server since the runtime started,
the TUI continuing them with the live events).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..util.lru import LRU
from ..wire.cost import DEFAULT_PRICE, Price, billed_units, number, provider_compaction, usage_usd

PROTOCOL = 1
INFO_FILE = "tui.json"
TOKEN_HEADER = "X-Contextwarden-Token"


def applied_compaction(data: dict[str, Any]) -> bool:
    """A ``compaction`` event whose summary went out (newly made or re-applied), not a decision to wait."""
    return data.get("applied") is not False


def new_compaction(data: dict[str, Any]) -> bool:
    """A compaction made by this request: a summary re-applied on a later request is the same one."""
    return applied_compaction(data) and not data.get("reused")


def new_clearing(data: dict[str, Any]) -> bool:
    """A ``clearing`` event that cleared results for the first time (``new`` 0: stubs re-applied)."""
    return data.get("new", 1) != 0


FAILED_STAGE = ("timeout", "error")  # a stage status after which the request's new work was not sent


@dataclass
class _Sent:
    """What one request's stages reported taking out and putting in, until its ``forward`` event."""

    freed: float = 0
    memory: float = 0
    injections: int = 0


class SentLedger:
    """What a request's rewrite really took out and put in, settled by its ``forward`` event: a request
    that fell back sent the original or only earlier decisions. Memory counts only when the request went
    out rewritten with every stage ok, and the tokens freed are never more than tokens in minus sent.
    """

    def __init__(self, limit: int = 2000) -> None:
        self._open = LRU(limit)  # flow id -> _Sent, until its forward event (a flow that has none: until it ages out)

    def note(self, ev: dict[str, Any]) -> bool:
        """Take in a ``clearing``, ``compaction`` or ``memory`` event; False for any other."""
        t, d, fid = ev.get("type"), ev.get("data") or {}, ev.get("flow_id")
        freed: float
        mem: float
        if t == "compaction" and applied_compaction(d):
            freed, mem = max(0, number(d.get("tokens_before")) - number(d.get("tokens_after"))), 0
        elif t == "clearing":
            freed, mem = max(0, number(d.get("tokens_freed"))), 0
        elif t == "memory" and (number(d.get("tokens")) > 0 or number(d.get("injected")) > 0):
            freed, mem = 0, number(d.get("tokens"))
        else:
            return t in ("compaction", "clearing", "memory")
        if fid:
            c: _Sent = self._open.get(fid, _Sent)
            c.freed += freed
            c.memory += mem
            c.injections += t == "memory"
        return True

    def settle(self, ev: dict[str, Any]) -> tuple[int, int, int]:
        """For a ``forward`` event: (tokens freed, memory tokens, memory injections) its request sent."""
        d = ev.get("data") or {}
        sent: _Sent = (ev.get("flow_id") and self._open.pop(ev["flow_id"])) or _Sent()  # (settled once: not kept)
        freed, mem, injections = sent.freed, sent.memory, sent.injections
        if not d.get("changed") or d.get("blocked"):
            return 0, 0, 0
        ti, to = d.get("tokens_in"), d.get("tokens_out")
        if isinstance(ti, (int, float)) and isinstance(to, (int, float)):
            freed = min(freed, max(0, ti - to))
        stages = d.get("stages")
        if isinstance(stages, list) and any(isinstance(s, dict) and s.get("status") in FAILED_STAGE for s in stages):
            mem, injections = 0, 0
        return int(freed), int(mem), int(injections)


@dataclass(eq=False)
class Totals:
    """Running counters over every event since the runtime started: the Overview's numbers (kept by the
    server, continued by the TUI with the live events).

    Measured: counts, the provider's usage, billed input units (input 1x + cache writes 1.25x + cache
    reads 0.1x). Counted by the proxy's tokenizer: tokens in, sent and freed. Estimated:
    ``est_saved_units`` (freed tokens at the rate each turn paid per sent token); dollars at list price
    (``cost.py``) over the ``priced_turns`` whose model the price table knows.
    """

    # counts
    events: int = 0
    requests: int = 0
    turns: int = 0
    compactions: int = 0
    clearings: int = 0
    compressions: int = 0
    memory_injections: int = 0
    errors: int = 0
    blocked: int = 0
    rewritten: int = 0
    bypassed: int = 0
    fallback: int = 0
    fallback_original: int = 0
    # sums
    tokens_in: float = 0
    tokens_sent: float = 0
    tokens_freed: float = 0
    compression_saved: float = 0
    memory_tokens: float = 0
    usage_input: float = 0
    usage_output: float = 0
    usage_cache_read: float = 0
    usage_cache_write: float = 0
    billed_units: float = 0
    est_saved_units: float = 0
    measured_turns: float = 0
    usd: float = 0
    est_saved_usd: float = 0
    priced_turns: float = 0
    unpriced_model: str = ""  # the latest model whose turns have no price (the user may set one: settings ``prices``)
    saving_turns_tokens_sent: float = 0
    provider_compactions: float = 0
    provider_compaction_units: float = 0
    provider_cleared: float = 0
    memory_stored: float = 0
    memory_text_only: float = 0
    memory_dropped: float = 0
    # the latest value, not a sum: memory's ingestion backlog (items waiting to be embedded), how many
    # of those are searchable by their words already, and how long the last stored batch's oldest item
    # had waited
    memory_pending: float = 0
    memory_indexed: float = 0
    memory_lag_s: float = 0
    started: float | None = None
    # freed and memory tokens count once the request's forward says they went out (not a total)
    sent: SentLedger = field(default_factory=SentLedger, repr=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Totals:
        return cls(**{k: v for k, v in (d or {}).items() if k in _TOTALS})

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _TOTALS}

    def add(self, ev: dict[str, Any]) -> None:
        t = ev.get("type")
        data = ev.get("data") or {}
        num = number
        self.events += 1
        if t == "memory" and ("ingested" in data or "dropped" in data or "backfilled" in data):
            self._memory_ingestion(data)
        if t == "startup":
            self.started = ev.get("ts")
        elif t == "request":
            self.requests += 1
            if data.get("mode") == "bypass":
                self.bypassed += 1
        elif t == "forward":
            ti, to = data.get("tokens_in"), data.get("tokens_out")
            if isinstance(ti, (int, float)) and isinstance(to, (int, float)):
                self.tokens_in += ti
                self.tokens_sent += to
            self.rewritten += bool(data.get("changed"))
            self.blocked += bool(data.get("blocked"))
            # sent without its new work: as the session's decided state, or (re-applying failed) as sent
            self.fallback += data.get("fallback") in ("decided", "original")
            self.fallback_original += data.get("fallback") == "original"
            freed, mem, injections = self.sent.settle(ev)
            self.tokens_freed += freed  # a compaction's tokens freed on every request that sends it
            self.memory_tokens += mem
            self.memory_injections += injections
        elif self.sent.note(ev):
            if t == "compaction" and applied_compaction(data):
                self.compactions += new_compaction(data)  # counted once
            elif t == "clearing":
                self.clearings += new_clearing(data)
        elif t == "compression":
            # tool outputs compressed at first sight, and the tokens that took out of each (counted once:
            # clearing's records put the same text back on later requests)
            self.compressions += int(num(data.get("compressed")))
            self.compression_saved += num(data.get("tokens_saved"))
        elif t == "error" or t == "response" and data.get("error"):  # (an upstream that failed: the row says err)
            self.errors += 1
        elif t == "turn":
            self.turns += 1
            usage = data.get("usage")
            if isinstance(usage, dict):
                i, o = num(usage.get("input_tokens")), num(usage.get("output_tokens"))
                cr, cw = num(usage.get("cache_read_input_tokens")), num(usage.get("cache_creation_input_tokens"))
                price = Price.of_turn(data)
                billed = billed_units(usage, price or DEFAULT_PRICE)
                self.usage_input += i
                self.usage_output += o
                self.usage_cache_read += cr
                self.usage_cache_write += cw
                self.billed_units += billed  # (the provider's compaction included: cost.billed_units)
                self.measured_turns += 1
                usd = usage_usd(usage, price)
                if usd is not None:
                    self.usd += usd
                    self.priced_turns += 1
                else:
                    self.unpriced_model = str(data.get("model") or "?")
                comp = provider_compaction(usage)  # the provider's own context management, apart
                if comp:
                    self.provider_compactions += comp["iterations"]
                    comp_units = billed_units(comp, price or DEFAULT_PRICE)
                    self.provider_compaction_units += comp_units
                    billed -= comp_units  # (the rate below: the request's own sampling only)
                self.provider_cleared += num(usage.get("provider_cleared_tokens"))
                ti, ts = data.get("tokens_in"), data.get("tokens_sent")
                if isinstance(ti, (int, float)) and isinstance(ts, (int, float)) and ts > 0:
                    # what the freed tokens would have cost at the rate this turn paid per sent token
                    self.est_saved_units += (ti - ts) * billed / ts
                    if price is not None:  # (the same units at the model's input price: one bill per turn)
                        self.est_saved_usd += (ti - ts) * billed / ts * price.input / 1e6
                    self.saving_turns_tokens_sent += ts

    def _memory_ingestion(self, data: dict[str, Any]) -> None:
        """Memory's ingestion events: items stored (as text only under load), dropped, still waiting."""
        num = number
        self.memory_stored += num(data.get("new"))
        self.memory_text_only += num(data.get("text_only"))
        self.memory_dropped += num(data.get("dropped"))
        for key, gauge in (("queued", "memory_pending"), ("pending", "memory_pending"), ("indexed", "memory_indexed"),
                           ("lag_s", "memory_lag_s")):
            if isinstance(data.get(key), (int, float)):
                setattr(self, gauge, data[key])


_TOTALS = tuple(f.name for f in fields(Totals) if f.name != "sent")  # what to_dict and from_dict carry
