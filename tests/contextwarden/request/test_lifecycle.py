"""The response's side of the lifecycle prices the turn: a model the built-in table lacks is priced by the
profile's ``prices`` (Claude Code's default model of the month), and the totals the TUI shows read the
price off the ``turn`` event."""

from __future__ import annotations

import pytest

from contextwarden.core.liveprotocol import Totals
from contextwarden.models.base import ApiKind
from contextwarden.request import lifecycle
from contextwarden.wire.streams.turn import Usage
from tests.support.stages import Harness, anthropic_tool_loop


@pytest.mark.parametrize("prices", [{}, {"claude-opus-5": {"input": 5, "output": 25, "min_cache": 4096}}])
def test_the_turn_event_carries_the_price_the_profile_gives_its_model(cw_home, prices):
    h = Harness(cw_home, profile="claude-code", overrides={"prices": prices})
    try:
        body = {**anthropic_tool_loop(2, result_words=50), "model": "claude-opus-5-5"}
        s = h.send(ApiKind.ANTHROPIC, body)
        usage = Usage(input_tokens=1_000, output_tokens=100, cache_read_input_tokens=10_000)
        lifecycle.complete(h.rt, s.ctx, lifecycle.turn_of(ApiKind.ANTHROPIC, s.ctx.model, body["messages"][-1], usage))
        turn = next(e.to_dict() for e in h.rt.bus.recent if e.type == "turn")
    finally:
        h.close()
    totals = Totals()
    totals.add(turn)
    if not prices:  # no guessing: tokens only, and the model named for the user to price
        assert turn["data"]["price"] is None and totals.priced_turns == 0 and totals.unpriced_model == "claude-opus-5-5"
        return
    assert turn["data"]["price"] == {"input": 5, "output": 25, "min_cache": 4096, "read": 0.1, "write": 1.25}
    assert totals.priced_turns == 1 and totals.usd == pytest.approx((1_000 + 10_000 * 0.1) * 5e-6 + 100 * 25e-6)
