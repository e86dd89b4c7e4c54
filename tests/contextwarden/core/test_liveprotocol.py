"""The live protocol's running totals bill a turn once (issue 41: usage_usd and a second bill of the
same usage for the estimated saving)."""

from __future__ import annotations

import pytest

from contextwarden.core import liveprotocol
from contextwarden.core.liveprotocol import Totals
from contextwarden.wire import cost


def test_a_turn_is_billed_once_and_its_saving_priced_at_the_rate_it_paid(monkeypatch):
    calls = []
    bill = cost.billed_from_usage

    def counted(usage, price):
        calls.append(price)
        return bill(usage, price)

    monkeypatch.setattr(cost, "billed_from_usage", counted)
    monkeypatch.setattr(liveprotocol, "billed_from_usage", counted, raising=False)
    usage = {"input_tokens": 1_000, "cache_read_input_tokens": 20_000, "cache_creation_input_tokens": 4_000,
             "output_tokens": 300}
    t = Totals()
    t.add({"type": "turn", "data": {"usage": usage, "model": "claude-sonnet-4-5", "tokens_in": 50_000, "tokens_sent": 25_000}})
    assert len(calls) == 1
    full = bill(usage, cost.price_for("claude-sonnet-4-5"))
    assert t.usd == pytest.approx(full.cost)
    # 25,000 tokens freed, at what each of the 25,000 sent cost
    assert t.est_saved_usd == pytest.approx(25_000 * full.input_cost / 25_000)


def test_a_request_s_ledger_is_settled_once_and_then_not_kept():
    """issue 41: the engine's ledger kept every settled request's record (604 after a load) until it aged out."""
    t = Totals()
    t.add({"type": "clearing", "flow_id": "f1", "data": {"tokens_freed": 500, "new": 1}})
    fwd = {"type": "forward", "flow_id": "f1", "data": {"changed": True, "tokens_in": 2_000, "tokens_out": 1_600}}
    t.add(fwd)
    assert t.tokens_freed == 400 and len(t.sent._open) == 0  # (freed capped at in minus sent)
    t.add(fwd)  # the same forward again settles nothing more
    assert t.tokens_freed == 400


def test_a_turn_is_priced_at_the_price_it_carries_and_unpriced_without_one():
    """A model the table lacks (Claude Code's claude-opus-5-5) is billed in dollars once the user priced
    it: the proxy prices the turn (settings ``prices``) and the totals, here and in the TUI, read it."""
    usage = {"input_tokens": 1_000, "cache_read_input_tokens": 10_000, "output_tokens": 100}
    price = {"input": 5, "output": 25, "min_cache": 4096, "read": 0.1, "write": 1.25}
    t = Totals()
    t.add({"type": "turn", "data": {"usage": usage, "model": "claude-opus-5-5", "price": price,
                                    "tokens_in": 20_000, "tokens_sent": 10_000}})
    t.add({"type": "turn", "data": {"usage": usage, "model": "claude-opus-5-5", "price": None,
                                    "tokens_in": 20_000, "tokens_sent": 10_000}})
    assert (t.measured_turns, t.priced_turns) == (2, 1)
    assert t.usd == pytest.approx((1_000 + 10_000 * 0.1) * 5e-6 + 100 * 25e-6)
    assert t.est_saved_usd == pytest.approx(10_000 * (1_000 + 10_000 * 0.1) / 10_000 * 5e-6)
