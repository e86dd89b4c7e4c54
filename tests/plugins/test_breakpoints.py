"""The breakpoints stage through the real pipeline, and what its marks are worth under the provider's cache rules."""

from __future__ import annotations

import copy

import pytest

from contextwarden.models.base import ApiKind
from contextwarden.settings import load_settings
from contextwarden.wire.cost import PromptCache, boundaries
from contextwarden.wire.dialects.anthropic import with_turn_breakpoints
from contextwarden.wire.tokens import TokenCounter, starts_turn
from tests.support.stages import Harness, anthropic_tool_loop, settings_overrides

CC = {"type": "ephemeral"}


def _marked(body: dict) -> list[int]:
    """The messages whose last block carries a breakpoint."""
    return [i for i, m in enumerate(body["messages"]) if isinstance(m["content"], list) and "cache_control" in m["content"][-1]]


def _count(body: dict) -> int:
    blocks = [b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"]]
    blocks += [x for b in blocks if b.get("type") == "tool_result" and isinstance(b.get("content"), list) for x in b["content"]]
    return sum("cache_control" in b for b in blocks + list(body.get("system") or []) + list(body.get("tools") or []))


def _starts(body: dict) -> list[int]:
    return [i for i, m in enumerate(body["messages"]) if starts_turn(m)]


@pytest.fixture()
def harness(tmp_path):
    return Harness(tmp_path, profile="claude-code", overrides=settings_overrides(stages=["breakpoints"]))


def test_the_starts_of_the_last_two_turns_get_a_breakpoint(harness):
    body = anthropic_tool_loop(4)  # 4 turns; its system and its last message carry the client's breakpoints
    assert _count(body) == 2
    sent = harness.send(ApiKind.ANTHROPIC, body)
    assert sent.changed
    starts = _starts(body)
    last = len(body["messages"]) - 1
    expected = [i for i in starts if i < last][-2:]
    assert _marked(sent.body) == sorted([*expected, last])
    assert _count(sent.body) == 4
    # nothing else changed: the same messages, the same blocks, only the two markers added
    for i, (a, b) in enumerate(zip(body["messages"], sent.body["messages"])):
        if i in expected:
            b = {**b, "content": [*b["content"][:-1], {k: v for k, v in b["content"][-1].items() if k != "cache_control"}]}
        assert a == b
    # the next request of the conversation marks the same messages: the cached prefix stays the same bytes
    again = harness.send(ApiKind.ANTHROPIC, body)
    assert again.body == sent.body


def test_never_more_than_the_providers_four(harness):
    body = anthropic_tool_loop(4)
    body["tools"] = [{"name": "Read", "description": "read", "input_schema": {"type": "object"}, "cache_control": CC}]
    sent = harness.send(ApiKind.ANTHROPIC, body)
    assert _count(sent.body) == 4  # one added, not two
    assert _marked(sent.body)[-2:] == [[i for i in _starts(body) if i < len(body["messages"]) - 1][-1], len(body["messages"]) - 1]
    body["system"] = [*body["system"], {"type": "text", "text": "more", "cache_control": CC}]
    full = harness.send(ApiKind.ANTHROPIC, body)
    assert not full.changed  # four already: the client's request as it came


def test_a_turn_start_the_client_marked_is_not_marked_again(harness):
    body = anthropic_tool_loop(3)
    prev = [i for i in _starts(body) if i < len(body["messages"]) - 1][-1]
    body["messages"][prev]["content"][-1]["cache_control"] = CC
    sent = harness.send(ApiKind.ANTHROPIC, body)
    assert _count(sent.body) == 4  # the one before it is marked instead
    assert len(_marked(sent.body)) == 3


def test_a_turn_start_written_as_a_string_is_left_as_the_client_wrote_it(harness):
    """A marker needs a block to sit on: a message whose content is a string would have to be written as
    blocks, which the stage does not do (only a marker is ever added). It still counts as one of the turns."""
    body = anthropic_tool_loop(4)
    starts = [i for i in _starts(body) if i < len(body["messages"]) - 1]
    body["messages"][starts[-1]]["content"] = body["messages"][starts[-1]]["content"][0]["text"]
    sent = harness.send(ApiKind.ANTHROPIC, body)
    assert sent.body["messages"][starts[-1]] == body["messages"][starts[-1]]
    assert _marked(sent.body) == [starts[-2], len(body["messages"]) - 1] and _count(sent.body) == 3


def test_openai_chat_has_none(tmp_path):
    h = Harness(tmp_path, profile="default", overrides=settings_overrides(stages=["breakpoints"]))
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
                                            {"role": "user", "content": "three"}, {"role": "assistant", "content": "four"},
                                            {"role": "user", "content": "five"}]}
    assert not h.send(ApiKind.OPENAI_CHAT, body).changed


def test_a_new_turn_reads_up_to_the_previous_turns_start_instead_of_writing_it_again():
    # A turn of tool calls longer than the provider's 20-block lookback, then a new user message to a model
    # that drops the previous turn's thinking: the prompt changes from that turn's first thinking block. With
    # the client's breakpoints only, nothing cached is within reach but the system prompt; with the turn
    # starts marked, the new request reads up to the previous turn's start.
    counter = TokenCounter(load_settings(None).tokens)
    model = "claude-sonnet-4"
    first = anthropic_tool_loop(3, result_words=300, tools_per_turn=12)
    first["model"] = model
    # the request in the middle of the third turn: its start, the model's call with thinking, 12 results
    first["messages"] = first["messages"][:-2]
    first["messages"][-1]["content"][-1]["cache_control"] = CC
    second = copy.deepcopy(first)
    second["messages"][-1]["content"][-1].pop("cache_control")
    second["messages"] += [{"role": "assistant", "content": [{"type": "text", "text": "Done."}]},
                           {"role": "user", "content": [{"type": "text", "text": "Thanks, now the docs.", "cache_control": CC}]}]

    def bill(marked: bool) -> tuple[int, int]:
        cache = PromptCache()
        out = []
        for ts, body in ((0.0, first), (60.0, second)):
            if marked:
                body = with_turn_breakpoints(body, 2)
            b = cache.bill(boundaries(body, counter, model), ts, model)
            out.append((b.read, b.write))
        return out[1]

    read_plain, write_plain = bill(False)
    read_marked, write_marked = bill(True)
    assert read_marked > read_plain + 2_000
    assert write_marked < write_plain - 2_000
    assert read_marked + write_marked == read_plain + write_plain  # the same prompt: only where it is read from moves


def test_nothing_where_the_previous_turns_thinking_stays_or_the_provider_edits_the_prompt(harness):
    keeps = anthropic_tool_loop(4)
    keeps["model"] = "claude-opus-4-8"  # keeps earlier turns' thinking: a new turn changes nothing before it
    assert not harness.send(ApiKind.ANTHROPIC, keeps).changed
    kept = anthropic_tool_loop(4)
    kept["context_management"] = {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}
    assert not harness.send(ApiKind.ANTHROPIC, kept).changed
    cleared = anthropic_tool_loop(4)
    cleared["context_management"] = {"edits": [{"type": "clear_tool_uses_20250919"}]}
    assert not harness.send(ApiKind.ANTHROPIC, cleared).changed
    small = anthropic_tool_loop(3, result_words=5)  # a prefix shorter than the provider caches
    assert not harness.send(ApiKind.ANTHROPIC, small).changed
