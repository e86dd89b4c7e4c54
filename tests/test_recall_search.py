"""Search for a reference the model used: the texts that hold it as written come first."""

from __future__ import annotations

from types import SimpleNamespace

from contextwarden.memory.service import exact_first


def _hit(text: str):
    return SimpleNamespace(item=SimpleNamespace(text=text))


def test_hits_holding_the_query_as_written_come_first_in_their_order():
    hits = [_hit("the retry policy is configured somewhere"), _hit("see vendor/acme/retry_policy.toml"),
            _hit("retry policy notes"), _hit("vendor/acme/retry_policy.toml: max_retries = 3")]
    got = exact_first("vendor/acme/retry_policy.toml", hits)
    assert [h.item.text for h in got] == [hits[1].item.text, hits[3].item.text, hits[0].item.text, hits[2].item.text]
    assert exact_first("nothing holds this", hits) == hits
    assert exact_first("", hits) == hits
    # a multi-line quote (an Edit's old_string) is found by its first line too
    quote = "def handler(request):\n    return respond(request)"
    hits2 = [_hit("unrelated"), _hit("   1→def handler(request):\n   2→    return respond(request)")]
    assert exact_first(quote, hits2)[0] is hits2[1]
