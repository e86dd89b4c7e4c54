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

    def counted(usage, model):
        calls.append(model)
        return bill(usage, model)

    monkeypatch.setattr(cost, "billed_from_usage", counted)
    monkeypatch.setattr(liveprotocol, "billed_from_usage", counted, raising=False)
    usage = {"input_tokens": 1_000, "cache_read_input_tokens": 20_000, "cache_creation_input_tokens": 4_000,
             "output_tokens": 300}
    t = Totals()
    t.add({"type": "turn", "data": {"usage": usage, "model": "claude-sonnet-4-5", "tokens_in": 50_000, "tokens_sent": 25_000}})
    assert len(calls) == 1
    full = bill(usage, "claude-sonnet-4-5")
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
