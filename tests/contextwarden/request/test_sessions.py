"""The first-turn hash: one conversation keeps one session id however its client frames the first turn."""

from __future__ import annotations

import pytest

from contextwarden.request.sessions import derive_session, first_turn_hash

CC = {"type": "ephemeral"}
IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}


def _sid(body: dict) -> str:
    sid, source = derive_session({}, body)
    assert source == "first-turn hash"
    return sid


@pytest.mark.parametrize("later", [
    # a plain string and one text block are the same turn
    [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
    # the breakpoint an SDK user (or Claude Code) puts on the latest message only, then moves on
    [{"role": "user", "content": [{"type": "text", "text": "hello there", "cache_control": CC}]}],
    [{"role": "user", "content": "hello there", "cache_control": CC}],
    # a system-role message added in front (OpenAI chat) does not move the first *user* turn
    [{"role": "system", "content": "be terse"}, {"role": "user", "content": "hello there"}],
    [{"role": "developer", "content": [{"type": "text", "text": "be terse", "cache_control": CC}]},
     {"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
])
def test_first_turn_framing_does_not_move_the_hash(later):
    turn1 = {"messages": [{"role": "user", "content": "hello there"}]}
    turn3 = {"messages": later + [{"role": "assistant", "content": "hi"},
                                  {"role": "user", "content": [{"type": "text", "text": "next", "cache_control": CC}]}]}
    assert _sid(turn1) == _sid(turn3)


def test_cache_control_anywhere_in_the_first_turn_is_ignored():
    marked = {"messages": [{"role": "user", "content": [
        {**IMAGE, "cache_control": CC},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"},
         "cache_control": CC, "citations": {"enabled": True}},
        {"type": "text", "text": "what is this?", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]}
    plain = {"messages": [{"role": "user", "content": [
        IMAGE,
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"},
         "citations": {"enabled": True}},
        {"type": "text", "text": "what is this?"}]}]}
    assert first_turn_hash(marked) == first_turn_hash(plain)


def test_responses_input_string_then_items_is_one_session():
    turn1 = {"input": "list files"}
    turn2 = {"instructions": "terse", "input": [
        {"role": "user", "content": "list files"},
        {"type": "function_call", "call_id": "c1", "name": "Bash", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "a.txt"}]}
    turn3 = {"input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list files"}]},
                       {"type": "message", "role": "user", "content": "and now?"}]}
    assert _sid(turn1) == _sid(turn2) == _sid(turn3)


@pytest.mark.parametrize("other", [
    {"messages": [{"role": "user", "content": "hello there!"}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]}]},
    {"messages": [{"role": "user", "content": [IMAGE, {"type": "text", "text": "hello there"}]}]},
    {"messages": [{"role": "user", "content": [{**IMAGE, "source": {**IMAGE["source"], "data": "AAAA"}},
                                               {"type": "text", "text": "hello there"}]}]},
])
def test_different_first_turns_are_different_sessions(other):
    assert _sid({"messages": [{"role": "user", "content": "hello there"}]}) != _sid(other)


def test_a_body_without_a_user_message_still_gets_a_stable_id():
    a = {"input": [{"type": "function_call_output", "call_id": "c1", "output": "x", "cache_control": CC}]}
    b = {"input": [{"type": "function_call_output", "call_id": "c1", "output": "x"}]}
    c = {"input": [{"type": "function_call_output", "call_id": "c2", "output": "x"}]}
    assert _sid(a) == _sid(b) != _sid(c)
    assert derive_session({}, {"messages": []}) == ("unknown", "none")
