"""wire.cost's price table: OpenAI's models are priced (Codex sessions show dollars), with their own
cached-input factor; a newer version of a listed model is not given the old one's price."""

from __future__ import annotations

import pytest

from contextwarden.settings import load_settings
from contextwarden.wire.cost import (
    Price,
    billed_from_usage,
    billed_units,
    cache_factors,
    known_price,
    price_for,
    usage_usd,
)


def test_openai_models_are_priced_with_their_cache_factor():
    # as the Responses stream reports it, normalised: 9,000 input of which 8,000 cached
    usage = {"input_tokens": 1000, "cache_read_input_tokens": 8000, "cache_creation_input_tokens": 0, "output_tokens": 100}
    assert usage_usd(usage, known_price("gpt-5-codex")) == pytest.approx((1000 + 8000 * 0.1) * 1.25e-6 + 100 * 10e-6)
    assert usage_usd(usage, known_price("gpt-4o-2024-08-06")) == pytest.approx((1000 + 8000 * 0.5) * 2.5e-6 + 100 * 10e-6)
    assert billed_from_usage(usage, price_for("gpt-4.1-mini")).cost == pytest.approx((1000 + 8000 * 0.25) * 0.4e-6 + 100 * 1.6e-6)
    assert known_price("gpt-5-codex-mini").input == 0.25 and known_price("gpt-5.1-codex").input == 1.25


def test_an_unlisted_version_is_unpriced_not_guessed():
    assert known_price("gpt-5.7") is None and known_price("gpt-50") is None and known_price("o33") is None
    assert usage_usd({"input_tokens": 10, "output_tokens": 1}, known_price("gpt-5.7-codex")) is None
    # Anthropic's dated and point releases keep their family's price
    assert known_price("claude-opus-4-1").input == 15 and known_price("claude-sonnet-4-20250514").input == 3


def test_billed_units_and_compactions_cache_factors_are_the_models():
    # the TUI's "billed input … at 1x" and compaction's cost model: a GPT-5 cache read is 0.1x, GPT-4o's
    # 0.5x; neither model pays a write premium; a model the table does not know gets its API's factors
    usage = {"input_tokens": 1000, "cache_read_input_tokens": 8000, "cache_creation_input_tokens": 2000}
    assert billed_units(usage, price_for("gpt-5-codex")) == pytest.approx(1000 + 800 + 2000)
    assert billed_units(usage, price_for("gpt-4o")) == pytest.approx(1000 + 4000 + 2000)
    assert billed_units(usage, price_for("claude-sonnet-4-5")) == billed_units(usage) == pytest.approx(1000 + 800 + 2500)
    assert cache_factors("openai_responses", "gpt-5-codex") == (0.1, 1.0)
    assert cache_factors("openai_chat", "gpt-4.1") == (0.25, 1.0)
    assert cache_factors("anthropic", "claude-opus-4-5") == (0.1, 1.25)
    assert cache_factors("openai_responses", "my-finetune") == (0.5, 1.0)
    assert cache_factors("ollama_chat", None) == (0.1, 1.0)


def test_a_model_the_table_lacks_is_priced_by_the_users_prices():
    # a new model (Claude Code's default of the month) is unpriced until the user prices it; the user's
    # entry wins over the table's, and covers the model's dated names, not a later version's
    settings = load_settings(None, environ={"CONTEXTWARDEN_PRICES": '{"claude-opus-5": {"input": 5, "output": 25, "min_cache": 4096},'
                                                                    ' "claude-sonnet-4": {"input": 2, "output": 10}}'})
    own = settings.prices
    assert known_price("claude-opus-5-5") is None and price_for("claude-opus-5-5").input == 3  # (the replay's default)
    assert known_price("claude-opus-5-5-20261101", own) == Price(5, 25, 4096)
    assert known_price("claude-opus-50", own) is None
    assert known_price("claude-sonnet-4-5", own).input == 2 and known_price("claude-sonnet-4-5").input == 3
    assert usage_usd({"input_tokens": 1000, "output_tokens": 100}, known_price("claude-opus-5-5", own)) == pytest.approx(
        1000 * 5e-6 + 100 * 25e-6)
    assert cache_factors("anthropic", "claude-opus-5-5", own) == (0.1, 1.25)
    # a turn event carries the price it was priced at; one from before turns carried a price: the table's
    assert Price.of_turn({"model": "claude-opus-5-5", "price": {"input": 5, "output": 25, "min_cache": 4096,
                                                                "read": 0.1, "write": 1.25}}) == Price(5, 25, 4096)
    assert Price.of_turn({"model": "claude-opus-5-5", "price": None}) is None
    assert Price.of_turn({"model": "claude-opus-4-1"}).input == 15
    assert Price.of_turn({"model": "x", "price": {"dollars": 1}}) is None
