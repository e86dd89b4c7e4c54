"""The Overview panel: traffic, tokens, provider usage, cost under the caching model, tags, fill."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, Static

from .. import format as fmt
from ..store import Store
from .fillbar import FillBars


def _grid() -> Table:
    t = Table.grid(padding=(0, 1), expand=True)
    t.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
    t.add_column(justify="right", no_wrap=True)
    return t


def _head(title: str) -> Text:
    return Text(title, style="bold underline", no_wrap=True, overflow="ellipsis")


def traffic_table(store: Store, now: float) -> Group:
    tot = store.totals
    t = _grid()
    t.add_row("uptime", fmt.duration(store.uptime(now)) if store.runtime_started else "–")
    for label in ("requests", "turns", "rewritten", "compactions", "clearings", "compressions", "memory injections"):
        t.add_row(label, fmt.num(getattr(tot, label.replace(" ", "_"))))
    if tot.memory_stored or tot.memory_pending or tot.memory_dropped:
        # memory's ingestion: what it stored, what still waits to be embedded (the lag), what it dropped
        t.add_row("memory stored", fmt.num(tot.memory_stored))
        # (searchable by their words meanwhile: indexed when submitted, embedded behind)
        notes = ([f"{fmt.num(min(tot.memory_indexed, tot.memory_pending))} searchable by words"] if tot.memory_indexed else []) \
            + ([f"{tot.memory_lag_s:.0f} s behind"] if tot.memory_lag_s >= 1 and tot.memory_pending else [])
        # (the lag is the last stored item's wait: with nothing waiting any more, nothing is behind)
        t.add_row("memory waiting to embed", fmt.num(tot.memory_pending) + (f" ({'; '.join(notes)})" if notes else ""))
        if tot.memory_dropped:
            t.add_row("memory dropped", Text(fmt.num(tot.memory_dropped), style="red"))
    t.add_row("errors", Text(fmt.num(tot.errors), style="red" if tot.errors else ""))
    if tot.blocked:
        t.add_row("blocked (budget)", fmt.num(tot.blocked))
    if tot.fallback:
        # requests sent without their new work (a stage failed or overran): the session's decided state
        rate = f" ({tot.fallback / tot.requests * 100:.1f}%)" if tot.requests else ""
        t.add_row("fell back", Text(f"{fmt.num(tot.fallback)}{rate}", style="yellow"))
    return Group(_head("Traffic"), t)


def tokens_table(store: Store) -> Group:
    tot = store.totals
    t = _grid()
    for label, attr in (("in (as the client sent)", "tokens_in"), ("sent upstream", "tokens_sent"),
                        ("freed (clear+compact)", "tokens_freed"), ("saved by compression", "compression_saved"),
                        ("memory injected", "memory_tokens")):
        t.add_row(label, fmt.num(getattr(tot, attr)))
    u = _grid()
    u.add_row("input · output", f"{fmt.num(tot.usage_input)} · {fmt.num(tot.usage_output)}")
    u.add_row("cache write · read", f"{fmt.num(tot.usage_cache_write)} · {fmt.num(tot.usage_cache_read)}")
    if tot.provider_compactions or tot.provider_cleared:  # the provider's own context management
        u.add_row("provider compacted", f"{fmt.num(tot.provider_compactions)}× · {fmt.num(tot.provider_compaction_units)} tokens at 1x")
        u.add_row("provider cleared", fmt.num(tot.provider_cleared))
    c = _grid()
    if tot.measured_turns:
        # dollars at list price for the turns whose model has a price; the input billed in tokens at 1x
        unpriced = tot.measured_turns - tot.priced_turns
        c.add_row("billed, list price", fmt.usd(tot.usd) + (f" ({fmt.num(unpriced)} turns unpriced)" if unpriced else ""))
        if unpriced:  # (a model the price table lacks: the user's profile may price it)
            c.add_row("set prices for", Text(tot.unpriced_model, style="dim"))
        c.add_row("billed input", f"{fmt.num(tot.billed_units)} tokens at 1x")
        if tot.saving_turns_tokens_sent:
            base = tot.billed_units + tot.est_saved_units
            share = f" {fmt.share(tot.est_saved_units / base * 100)}" if base > 0 else ""
            saved = f"≈{fmt.usd(tot.est_saved_usd)}" if tot.priced_turns else f"≈{fmt.num(tot.est_saved_units)} tokens"
            c.add_row(Text("saved (estimate)", style="italic"), Text(f"{saved}{share}", style="italic"))
        else:
            c.add_row(Text("saved (estimate)", style="italic"), "–")
    else:
        c.add_row(Text("no provider usage yet", style="dim"), "")
    return Group(_head("Tokens, counted by the proxy"), t,
                 _head(f"Provider usage, reported ({fmt.num(tot.measured_turns)} turns)"), u,
                 _head("Cost (cache write 1.25x, read 0.1x)"), c)


class Overview(Vertical):
    DEFAULT_CSS = """
    Overview { padding: 0 1; }
    Overview > Horizontal { height: auto; }
    Overview #ov-traffic { width: 1fr; margin-right: 2; }
    Overview #ov-tokens { width: 1fr; }
    Overview #ov-tags { height: auto; margin-top: 1; }
    Overview .title { text-style: bold underline; }
    """

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Static(id="ov-traffic")
            yield Static(id="ov-tokens")
        yield Static(id="ov-tags")
        yield Label("Context fill (window, soft and hard thresholds marked)", classes="title")
        yield FillBars(id="ov-fill")

    def refresh_from(self, store: Store, now: float, clock_only: bool = False) -> None:
        """Everything from ``store``; ``clock_only``: only what the time changes (the uptime)."""
        self.query_one("#ov-traffic", Static).update(traffic_table(store, now))
        if clock_only:
            return
        self.query_one("#ov-tokens", Static).update(tokens_table(store))
        tags = store.active_tags()
        t = Text()
        t.append("Active tags ", style="bold")
        if tags:
            for i, (tag, n) in enumerate(tags):
                t.append(("" if i == 0 else " ") + tag, style="cyan")
                if n > 1:
                    t.append(f"×{n}", style="dim")
        else:
            t.append("none yet", style="dim")
        self.query_one("#ov-tags", Static).update(t)
        soft, hard = store.thresholds
        self.query_one("#ov-fill", FillBars).show(store.recent_sessions(4), store.window_of, soft, hard)
