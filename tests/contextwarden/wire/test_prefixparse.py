"""Parsing a body by its remembered history (prefixparse.py), the message bytes that key the caches
(Runtime.message_bytes), and what the pipeline makes of them: the bytes sent upstream (wire_of,
serialise) and the validator resuming from checkpoints (validate.Checkpoints, one per conversation).

The contract checked everywhere: ``RecentBodies.parse(body)[0] == orjson.loads(body)``, whatever was
remembered before, and a rewritten body's bytes and validation are what a fresh process would give.
"""

from __future__ import annotations

import copy
import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contextwarden.models.base import ApiKind
from contextwarden.request.pipeline import serialise, wire_of
from contextwarden.wire import validate
from contextwarden.wire.dialects import validate_rewrite
from contextwarden.wire.prefixparse import RecentBodies
from tests.support.convgen import anthropic_bodies, check_anthropic
from tests.support.stages import Harness, anthropic_tool_loop, settings_overrides

A = ApiKind.ANTHROPIC


# ---------------------------------------------------------------------------------------------------
# helpers


def step(rb: RecentBodies, body: bytes):
    """What prepare() does with a body: parse, the message bytes (the known ones handed on), remember."""
    data, known = rb.parse(body)
    assert data == orjson.loads(body)
    msgs = data.get("messages") if isinstance(data, dict) else None
    if isinstance(msgs, list):
        raws = list(known.raws) if known is not None else []
        raws += [orjson.dumps(m) for m in msgs[len(raws):]]
        rb.remember(body, data, raws, known)
    return data, known


def conversation(n_turns: int = 6) -> list[dict]:
    """Messages of a tool loop, without the final user message (each prefix of odd length ends with a user)."""
    return anthropic_tool_loop(n_turns, result_words=40)["messages"][:-1]


def body_with(msgs: list[dict], order: tuple[str, ...] = ("model", "max_tokens", "messages", "system", "tools", "metadata"),
              **over) -> dict:
    base = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": True,
            "system": [{"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}}],
            "tools": [{"name": "Read", "description": "read", "input_schema": {"type": "object"}}],
            "metadata": {"user_id": "user_u_account_a_session_s1"}, "messages": msgs}
    base.update(over)
    return {k: base[k] for k in order if k in base} | {k: v for k, v in base.items() if k not in order and k in over}


ORDERS = {
    "messages-first": ("messages", "model", "system", "tools", "metadata"),
    "messages-middle": ("model", "max_tokens", "messages", "system", "tools", "metadata"),
    "messages-last": ("model", "max_tokens", "stream", "metadata", "system", "tools", "messages"),
}


# ---------------------------------------------------------------------------------------------------
# a growing conversation


@pytest.mark.parametrize("order", list(ORDERS), ids=list(ORDERS))
def test_growing_bodies_parse_as_orjson_and_share_the_history(order):
    rb = RecentBodies()
    msgs = conversation(6)
    prev = None
    sizes = list(range(1, len(msgs) + 1, 2))
    for k, n in enumerate(sizes):
        body = orjson.dumps(body_with(msgs[:n], ORDERS[order], temperature=k / 10))  # a key after the rest, changing
        data, known = step(rb, body)
        assert data == orjson.loads(body)
        assert list(data) == list(orjson.loads(body))  # the keys in the same order too
        if prev is None:
            assert known is None
        else:
            assert known is not None, f"request {k}: the previous body's history was not recognised"
            assert len(known.msgs) == len(prev["messages"])
            for i, m in enumerate(prev["messages"]):
                assert data["messages"][i] is m, "the known messages must be the previous request's own dicts"
            assert data["messages"] is not prev["messages"]
        prev = data
    assert rb.hits == len(sizes) - 1


@pytest.mark.parametrize("order", ["messages-middle", "messages-last"])
def test_a_changed_key_before_messages_means_nothing_is_known(order):
    rb = RecentBodies()
    msgs = conversation(3)
    step(rb, orjson.dumps(body_with(msgs[:3], ORDERS[order], max_tokens=1)))
    body = orjson.dumps(body_with(msgs[:5], ORDERS[order], max_tokens=2))
    data, known = step(rb, body)
    assert known is None and data == orjson.loads(body) and data["max_tokens"] == 2


def test_a_moved_breakpoint_keeps_the_history_before_it():
    """Claude Code moves its cache_control marker to the newest message: the old last message changes, so
    the remembered prefix (which ends with it) matches up to the message before it. The result is
    orjson's, and that history is the previous request's own dicts."""
    rb = RecentBodies()
    msgs = conversation(5)
    datas = []
    for n in range(1, len(msgs) + 1, 2):
        ms = copy.deepcopy(msgs[:n])
        ms[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
        body = orjson.dumps(body_with(ms))
        data, known = step(rb, body)
        assert data == orjson.loads(body)
        datas.append((data, known, n))
    for k, (data, known, _n) in enumerate(datas):
        if k == 0:
            assert known is None
            continue
        prev_data, _, prev_n = datas[k - 1]
        if prev_n == 1:  # nothing before the message whose marker moved
            assert known is None
            continue
        assert known is not None and len(known.msgs) == prev_n - 1, "the history before the moved breakpoint"
        assert all(a is b for a, b in zip(data["messages"], prev_data["messages"][:prev_n - 1]))
        assert data["messages"][prev_n - 1] is not prev_data["messages"][prev_n - 1]  # the changed one: its own


def test_the_history_is_not_shared_with_a_different_conversation():
    rb = RecentBodies()
    msgs = conversation(3)
    step(rb, orjson.dumps(body_with(msgs[:5])))
    other = copy.deepcopy(msgs[:7])
    other[2]["content"][0]["content"] = "a different result"
    body = orjson.dumps(body_with(other))
    data, known = step(rb, body)
    assert data == orjson.loads(body) and data["messages"][2]["content"][0]["content"] == "a different result"
    assert known is None or len(known.msgs) <= 2


# ---------------------------------------------------------------------------------------------------
# bodies of every shape give what orjson gives


def test_keys_before_and_after_messages():
    rb = RecentBodies()
    msgs = conversation(3)
    b1 = orjson.dumps(body_with(msgs[:3], ("model", "messages", "system", "tools", "metadata")))
    step(rb, b1)
    # after: system, tools, metadata changed; a new key; the same keys
    b2 = orjson.dumps(body_with(msgs[:5], ("model", "messages", "system", "tools", "metadata"),
                                system="changed", metadata={"user_id": "x", "extra": [1, 2.5, None, True]}, temperature=0.2))
    data, known = step(rb, b2)
    assert known is not None and data == orjson.loads(b2) and list(data) == list(orjson.loads(b2))
    assert list(data) == ["model", "messages", "system", "tools", "metadata", "temperature"]


def test_a_nested_messages_key_in_a_tool_input_or_in_metadata():
    rb = RecentBodies()
    msgs = conversation(3)
    step(rb, orjson.dumps(body_with(msgs[:3])))
    nested = copy.deepcopy(msgs[:5])
    nested[3]["content"][-1]["input"] = {"messages": [{"role": "user", "content": "inner"}], "n": 1}
    b2 = orjson.dumps(body_with(nested))
    data, _ = step(rb, b2)
    assert data == orjson.loads(b2)
    assert data["messages"][3]["content"][-1]["input"]["messages"] == [{"role": "user", "content": "inner"}]
    b3 = orjson.dumps(body_with(nested + copy.deepcopy(msgs[5:7]), metadata={"messages": [{"role": "assistant", "content": "m"}]}))
    data, _ = step(rb, b3)
    assert data == orjson.loads(b3) and data["metadata"] == {"messages": [{"role": "assistant", "content": "m"}]}
    assert len(data["messages"]) == 7


def test_a_nested_messages_key_before_the_real_one_is_not_taken_for_it():
    rb = RecentBodies()
    msgs = conversation(3)
    order = ("model", "metadata", "messages", "system")
    md = {"user_id": "u", "messages": [msgs[0]]}  # the same first message, nested in a key before
    b1 = orjson.dumps(body_with(msgs[:3], order, metadata=md))
    step(rb, b1)
    b2 = orjson.dumps(body_with(msgs[:5], order, metadata=md))
    data, known = step(rb, b2)
    assert data == orjson.loads(b2)
    assert data["metadata"]["messages"] == [msgs[0]] and len(data["messages"]) == 5
    b3 = orjson.dumps(body_with(msgs[:1], order, metadata={"user_id": "u", "messages": msgs[:3]}))
    data, known = step(rb, b3)
    assert data == orjson.loads(b3) and len(data["messages"]) == 1 and len(data["metadata"]["messages"]) == 3


def test_a_duplicate_messages_key_after_the_history():
    rb = RecentBodies()
    msgs = conversation(2)
    b1 = orjson.dumps(body_with(msgs[:3], ("model", "messages")))
    step(rb, b1)
    dup = b1[:-1] + b',"messages":[{"role":"user","content":"the last value wins"}]}'
    data, known = step(rb, dup)
    assert data == orjson.loads(dup) == {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "the last value wins"}]}
    grown = orjson.dumps(body_with(msgs[:5], ("model", "messages")))
    dup2 = grown[:-1] + b',"messages":[]}'
    data, _ = rb.parse(dup2)
    assert data == orjson.loads(dup2) == {"model": "claude-sonnet-4-5", "messages": []}


@pytest.mark.parametrize("ascii_only", [True, False])
def test_a_spaced_body_is_known_too(ascii_only):
    """A body written with spaces after its separators (Python's json.dumps, non-ASCII escaped or not)
    reuses the previous request's history as a compact one does, and parses as orjson parses it."""
    rb = RecentBodies()
    msgs = copy.deepcopy(conversation(4))
    msgs[2]["content"][0]["content"] = "caf\u00e9 \u2014 r\u00e9sum\u00e9"
    spaced = lambda b: json.dumps(b, ensure_ascii=ascii_only).encode()  # noqa: E731
    step(rb, spaced(body_with(msgs[:3])))
    data, known = step(rb, spaced(body_with(msgs[:5])))
    assert known is not None and len(known.msgs) == 3 and known.raws == [orjson.dumps(m) for m in msgs[:3]]
    data, known = step(rb, spaced(body_with(msgs[:7])))
    assert known is not None and len(known.msgs) == 5 and data == orjson.loads(spaced(body_with(msgs[:7])))
    # a compact body of the same conversation is not taken for a spaced one, nor the other way round
    data, known = step(rb, orjson.dumps(body_with(msgs[:7])))
    assert known is None and data == orjson.loads(orjson.dumps(body_with(msgs[:7])))


def test_a_history_known_up_to_a_message_written_otherwise_is_used():
    """When a message after the first is not written as orjson.dumps writes it, the history up to the
    message before it is remembered and used: the remembered prefix must end at that message, not at the
    comma after it (else ``parse`` finds ``{`` after the prefix and never uses it)."""
    msgs = copy.deepcopy(conversation(3))
    msgs[2]["content"][0]["content"] = "caf\u00e9 \u2014 r\u00e9sum\u00e9"  # json.dumps escapes it, orjson does not
    c1 = json.dumps(body_with(msgs[:3]), separators=(",", ":")).encode()
    c2 = json.dumps(body_with(msgs[:5]), separators=(",", ":")).encode()
    rb = RecentBodies()
    step(rb, c1)
    data, known = step(rb, c2)
    assert data == orjson.loads(c2)
    assert rb._known and rb._known[0].raws == [orjson.dumps(m) for m in msgs[:2]]  # messages 0 and 1 are exact
    assert known is not None and len(known.msgs) == 2, (
        f"the history known up to message 1 was not used: the remembered prefix ends with "
        f"{rb._known[0].chunks[-1][-12:]!r} (a trailing comma) instead of the end of message 1")


def test_only_messages_written_exactly_as_orjson_are_remembered():
    m0 = {"role": "user", "content": "start"}
    m2 = {"role": "user", "content": "c"}
    # message 1 written with an escape: the same dict, other bytes
    body = b'{"model":"m","messages":[' + orjson.dumps(m0) + b',{"role":"assistant","content":"\\u0061"},' + orjson.dumps(m2) + b"]}"
    rb = RecentBodies()
    data, _ = step(rb, body)
    assert data["messages"][1] == {"role": "assistant", "content": "a"}
    assert len(rb._known) == 1 and rb._known[0].msgs == [m0] and rb._known[0].raws == [orjson.dumps(m0)]
    assert rb._known[0].msgs[0] is data["messages"][0]
    # the next body written the same way: still what orjson gives
    body2 = body[:-2] + b',{"role":"assistant","content":"d"}]}'
    data2, _ = step(rb, body2)
    assert data2 == orjson.loads(body2) and data2["messages"][1]["content"] == "a"


def test_messages_that_are_not_objects():
    rb = RecentBodies()
    b1 = b'{"messages":[1,"a",null,{"role":"user","content":"x"}],"k":1}'
    step(rb, b1)
    for b in (b'{"messages":[1,"a",null,{"role":"user","content":"x"},2.5,[]],"k":2}',
              b'{"messages":[12]}', b'{"messages":[1.5]}', b'{"messages":[1e3]}', b'{"messages":[1,"ab"]}',
              b'{"messages":[1,"a",null,{"role":"user","content":"x"}]}', b'{"messages":[1,"a",null,{"role":"user","content":"xy"}]}',
              b'{"messages":"not a list"}', b'{"messages":[1,"a",null,{"role":"user","content":"x"}]} '):
        data, _ = step(rb, b)
        assert data == orjson.loads(b), b


MALFORMED_TAILS = [
    b',{"role":"user","content":"x"}',  # cut short
    b',{"role":"user","content":"x"}]',  # no closing brace
    b',,{"role":"user","content":"x"}]}',
    b']]}',
    b'],"system":}',
    b',{"role":"user","content":"x"}]}garbage',
    b']}]',
    b',{"role":"user","content":"x}]}',
    b',{"role":"user","content":"\xff"}]}',  # not UTF-8
]


@pytest.mark.parametrize("tail", MALFORMED_TAILS)
def test_a_malformed_body_after_a_known_history_raises_like_orjson(tail):
    rb = RecentBodies()
    msgs = conversation(2)
    b1 = orjson.dumps({"model": "m", "messages": msgs[:3]})
    step(rb, b1)
    bad = b1[:-2] + tail
    assert bad.startswith(rb._known[0].chunks[0])  # it does start with the remembered history
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(bad)
    with pytest.raises(orjson.JSONDecodeError):
        rb.parse(bad)


@pytest.mark.parametrize("tail", [b",]}", b", ]}", b',]\n}'])
def test_a_trailing_comma_after_the_known_history_is_rejected_like_orjson(tail):
    """A comma right after the known messages and no value (``[m1,]``, a trailing comma orjson rejects) is
    not JSON, whatever the known history: the rest must not decode as an empty list."""
    rb = RecentBodies()
    msgs = conversation(2)
    b1 = orjson.dumps({"model": "m", "messages": msgs[:3]})
    step(rb, b1)
    bad = b1[:-2] + tail
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(bad)
    try:
        got = rb.parse(bad)
    except orjson.JSONDecodeError:
        return
    pytest.fail(f"RecentBodies.parse accepted {bad[-40:]!r}, which orjson.loads rejects (trailing comma after the "
                f"known history): it returned {str(got[0])[:80]}...")


def _known_tail(rb: RecentBodies) -> tuple[bytes, list[dict]]:
    """Three bodies of one conversation with the same keys after the history, so that the tail is known;
    the third's bytes and messages."""
    msgs = conversation(3)
    for n in (1, 3, 5):
        body = orjson.dumps(body_with(msgs[:n]))
        data, _ = step(rb, body)
        if n == 3:  # learnt from the second body, as decoded for it (not decoded a second time)
            assert rb._known[0].rest["tools"] is data["tools"]
    assert rb._known[0].tail is not None and body.endswith(rb._known[0].tail)
    return body, msgs


def test_the_keys_after_the_history_are_decoded_once_per_conversation():
    """A client sends the same system prompt and tools every time: after the history, only the new
    messages are decoded; the keys after them are the known body's own objects (like its messages)."""
    rb = RecentBodies()
    body, msgs = _known_tail(rb)
    d3, _ = rb.parse(body)
    b4 = orjson.dumps(body_with(msgs[:7]))
    d4, k4 = step(rb, b4)
    assert k4 is not None and d4 == orjson.loads(b4) and list(d4) == list(orjson.loads(b4))
    assert d4["system"] is d3["system"] and d4["tools"] is d3["tools"] and d4["metadata"] is d3["metadata"]
    d5, _ = step(rb, b4)  # the same body again: no new message
    assert d5 == orjson.loads(b4) and d5["tools"] is d3["tools"]
    b6 = orjson.dumps(body_with(msgs[:7], metadata={"user_id": "another"}))  # another tail: decoded
    d6, _ = step(rb, b6)
    assert d6 == orjson.loads(b6) and d6["tools"] is not d3["tools"]


@pytest.mark.parametrize("middle", [b",", b", ", b",{}garbage", b',{"role":"user","content":"x"},',
                                    b',{"role":"user","content":"x"}],"messages":[{"role":"user"}',
                                    b',{"role":"user","content":"x}', b'{"role":"user","content":"x"}'])
def test_new_messages_before_a_known_tail_parse_as_orjson(middle):
    """Whatever is written between the known history and the known tail, the result is what
    ``orjson.loads`` gives, or its error (a trailing comma, garbage, a duplicate history key...)."""
    rb = RecentBodies()
    body, _ = _known_tail(rb)
    k = rb._known[0]
    bad = body[:k.ends[-1]] + middle + k.tail
    try:
        want = orjson.loads(bad)
    except orjson.JSONDecodeError:
        with pytest.raises(orjson.JSONDecodeError):
            rb.parse(bad)
        return
    assert rb.parse(bad)[0] == want


@pytest.mark.parametrize("key", [b'"messages" :', b'"m\\u0065ssages":', b'"messages"\n:'])
def test_a_duplicate_messages_key_spelled_otherwise_gives_the_last_value(key):
    """A later duplicate top-level ``messages`` key, however it is written (whitespace before the colon,
    an escape), wins as in a full parse: the known history is not put in front of its value."""
    rb = RecentBodies()
    msgs = conversation(2)
    b1 = orjson.dumps({"model": "m", "messages": msgs[:3]})
    step(rb, b1)
    body = b1[:-1] + b"," + key + b'[{"role":"user","content":"only this"}]}'
    want = orjson.loads(body)
    assert want["messages"] == [{"role": "user", "content": "only this"}]
    got, _ = rb.parse(body)
    assert got == want, (f"parse(body) != orjson.loads(body) for a duplicate key spelled {key!r}: "
                         f"{len(got['messages'])} messages instead of 1")


def test_a_key_ending_in_an_escaped_quote_and_messages_is_not_the_messages_key():
    """The key ``abc"messages`` is written ``"abc\\"messages":[``, which contains ``"messages":[``: its list
    must not be taken for the history (the head, closed there, must end with a ``messages`` key), or a
    later body without a real ``messages`` key would get one invented."""
    rb = RecentBodies()
    m = {"role": "user", "content": "hi"}
    step(rb, orjson.dumps({'abc"messages': [m], "messages": [m]}))
    body = orjson.dumps({'abc"messages': [m, {"role": "assistant", "content": "x"}]})
    want = orjson.loads(body)
    got, _ = rb.parse(body)
    assert got == want, f"parse(body) = {got!r}, orjson.loads(body) = {want!r}"


# ---------------------------------------------------------------------------------------------------
# property: a body grown from a remembered one


@st.composite
def grown_bodies(draw):
    body = draw(anthropic_bodies())
    msgs = body["messages"]
    j = draw(st.integers(1, len(msgs)))
    i = draw(st.integers(1, j))
    keys = [k for k in body if k != "messages"]
    keys = draw(st.permutations(keys))
    pos = draw(st.integers(0, len(keys)))
    order = list(keys[:pos]) + ["messages"] + list(keys[pos:])

    def make(ms):
        return {k: (ms if k == "messages" else body[k]) for k in order}

    b0, b1, b2 = make(msgs[:i]), make(msgs[:j]), make(msgs)
    change = draw(st.sampled_from([None, "max_tokens", "metadata", "system", "extra", "nested", "stream"]))
    changed_key = {"nested": "metadata", "extra": "temperature"}.get(change, change)
    if change == "max_tokens":
        b2["max_tokens"] = 1
    elif change == "metadata":
        b2["metadata"] = {"user_id": "someone else", "n": [1, {"x": None}]}
    elif change == "system":
        b2["system"] = b2["system"] + [{"type": "text", "text": "more"}]
    elif change == "extra":
        b2["temperature"] = 0.25
    elif change == "nested":
        b2["metadata"] = {"messages": [{"role": "user", "content": "nested"}]}
    elif change == "stream":
        b2["stream"] = False
    # a changed key before messages: parsed whole (a "messages" key nested in the rest is not the
    # top-level one, so the history is still used)
    head_changed = changed_key in keys[:pos]
    return b0, b1, b2, head_changed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(grown_bodies())
def test_property_a_grown_body_parses_as_orjson(bodies):
    b0, b1, b2, head_changed = bodies
    rb = RecentBodies()
    raw0, raw1, raw2 = (orjson.dumps(b) for b in (b0, b1, b2))
    d0, _ = step(rb, raw0)
    d1, k1 = step(rb, raw1)
    assert k1 is not None, "b1 starts with b0's bytes up to its last message"
    assert all(a is b for a, b in zip(d1["messages"], d0["messages"]))
    d2, k2 = step(rb, raw2)
    assert d2 == orjson.loads(raw2) == b2
    assert list(d2) == list(b2)
    if not head_changed:
        assert k2 is not None, "the grown body's history was not recognised"
        assert len(k2.msgs) == len(b1["messages"])
        assert all(a is b for a, b in zip(d2["messages"], d1["messages"]))
    else:
        assert k2 is None
    # and a fresh parser agrees
    assert RecentBodies().parse(raw2)[0] == d2


# ---------------------------------------------------------------------------------------------------
# Runtime.message_bytes


@pytest.fixture
def harness(cw_home):
    h = Harness(cw_home, overrides=settings_overrides(stages=[]))
    yield h
    h.close()


def test_message_bytes_hands_on_known_bytes_and_says_when_they_are_exact(harness):
    rt = harness.rt
    msgs = conversation(2)
    raws, exact = rt.conversations.get((A, "t", "s")).message_bytes(msgs)
    assert exact and raws == [orjson.dumps(m) for m in msgs]
    # known bytes (prefixparse) are handed on as the same objects
    more = msgs + [{"role": "user", "content": "next"}]
    raws2, exact2 = rt.conversations.get((A, "t", "s")).message_bytes(more, known=raws[:3])
    assert exact2 and all(a is b for a, b in zip(raws2, raws[:3])) and raws2 == [orjson.dumps(m) for m in more]
    # equal messages (parsed again) get the previous request's bytes objects
    again = orjson.loads(orjson.dumps(more))
    raws3, _ = rt.conversations.get((A, "t", "s")).message_bytes(again)
    assert all(a is b for a, b in zip(raws3, raws2))
    # the same content with keys in another order: the bytes are of an equal message, not exact
    reordered = [dict(reversed(list(m.items()))) for m in again]
    raws4, exact4 = rt.conversations.get((A, "t", "s")).message_bytes(reordered)
    assert not exact4 and raws4 == raws2
    # another session does not share
    raws5, exact5 = rt.conversations.get((A, "t", "other")).message_bytes(reordered)
    assert exact5 and raws5 == [orjson.dumps(m) for m in reordered]


def test_message_bytes_of_the_same_messages_twice_stays_inexact(harness):
    """A message that *is* the previous call's message (``m is pm[i]``) gets the previous bytes, which may
    themselves be only of an equal message (the previous call said exact=False): exact stays False."""
    rt = harness.rt
    rt.conversations.get((A, "t", "s")).message_bytes([{"b": 1, "a": 2}])
    msgs = [{"a": 2, "b": 1}]
    raws, exact = rt.conversations.get((A, "t", "s")).message_bytes(msgs)
    assert not exact
    raws, exact = rt.conversations.get((A, "t", "s")).message_bytes(msgs)  # the very same list and dicts again
    assert not exact or raws == [orjson.dumps(m) for m in msgs], (
        f"message_bytes says exact but returns {raws!r} for {msgs!r} (orjson.dumps gives {orjson.dumps(msgs[0])!r})")


# ---------------------------------------------------------------------------------------------------
# the pipeline: bytes upstream and validation, request after request


class _SpyCheckpoints(validate.Checkpoints):
    def __init__(self) -> None:
        super().__init__()
        self.resumed: list[int] = []

    def resume(self, keys):
        k, f = super().resume(keys)
        self.resumed.append(k)
        return k, f


def _cold(api, new, original):
    """validate_rewrite in a fresh process: no checkpoints, no cached facts, the bodies as parsed anew."""
    return validate_rewrite(api, orjson.loads(orjson.dumps(new)), orjson.loads(orjson.dumps(original)))


def _broken_variants(wire: dict) -> list[dict]:
    """Rewrites a buggy stage could make of a rewritten body, mostly near its end (where a checkpoint of the
    previous request's body is resumed from) and one early (where none may be)."""
    msgs = wire["messages"]
    out = []
    blank = copy.deepcopy(msgs[-1])
    blank["content"] = list(blank["content"]) + [{"type": "text", "text": "  "}]
    out.append({**wire, "messages": msgs[:-1] + [blank]})
    out.append({**wire, "messages": msgs[:-1]})  # the last message dropped
    out.append({**wire, "messages": msgs + [copy.deepcopy(msgs[1]), copy.deepcopy(msgs[2])]})  # duplicated ids
    if len(msgs) > 4:
        out.append({**wire, "messages": msgs[:-3] + [msgs[-2], msgs[-3], msgs[-1]]})  # swapped
        early = copy.deepcopy(msgs[1])
        early["content"] = []
        out.append({**wire, "messages": msgs[:1] + [early] + msgs[2:]})
        out.append({**wire, "messages": msgs[:2] + msgs[3:]})  # a tool_result message dropped early
    out.append({**wire, "messages": msgs + [{"role": "user", "content": [{"type": "text", "text": "x",
                                                                          "cache_control": {"type": "ephemeral"}}]}] * 4})
    return out


@pytest.mark.parametrize("moving_breakpoint", [False, True], ids=["stable", "moving-breakpoint"])
def test_a_session_sends_exact_bytes_and_validates_as_a_fresh_process(cw_home, monkeypatch, moving_breakpoint):
    from contextwarden.wire import history

    spy = _SpyCheckpoints()
    monkeypatch.setattr(history, "Checkpoints", lambda size=8: spy)  # the conversation's checkpoints
    h = Harness(cw_home, profile="claude-code", overrides=settings_overrides(
        window=9_000, stages=["strip", "tagging", "clearing", "compaction"],
        # (without the working set, which keeps the Reads: the broken variants below assume the cut and
        # stubs this session had; the working set has its own tests)
        clearing={"trigger_tokens": 3000, "clear_at_least": 500, "keep_recent": 2, "working_set_tokens": 0}))
    try:
        full = anthropic_tool_loop(7, result_words=250, session="pp-1")
        msgs = full["messages"][:-1]
        top = {k: v for k, v in full.items() if k != "messages"}
        sent_all = []
        rewritten = compacted = 0
        hits_before = 0
        for k, n in enumerate(range(3, len(msgs) + 1, 2)):
            ms = msgs[:n]
            if moving_breakpoint:
                ms = ms[:-1] + [copy.deepcopy(ms[-1])]
                ms[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
            body = {**top, "messages": ms}
            raw = orjson.dumps(body)
            sent = h.send(A, body)
            ctx = sent.ctx
            assert ctx.original == orjson.loads(raw), f"request {k}: the parsed body is not the client's"
            if not moving_breakpoint and k:
                assert h.rt.recent.hits > hits_before, f"request {k}: the previous body's history was not used"
            hits_before = h.rt.recent.hits
            assert ctx.message_raw is not None and len(ctx.message_raw) == len(ms)
            if ctx.raw_exact:
                assert ctx.message_raw == [orjson.dumps(m) for m in ctx.original["messages"]]
            else:
                assert [orjson.loads(r) for r in ctx.message_raw] == ctx.original["messages"]
            sent_all.append((raw, sent))
            if sent.outcome.body is None:
                assert sent.outcome.reason == "unchanged", sent.outcome.reason
                continue
            rewritten += 1
            wire, raws = wire_of(ctx)
            # the bytes upstream are orjson.dumps of the rewritten body, byte for byte
            assert sent.outcome.body == orjson.dumps(wire), f"request {k}: serialise is not orjson.dumps"
            assert serialise(wire, raws) == orjson.dumps(wire)
            assert wire == ctx.request.wire()
            assert sent.outcome.body == orjson.dumps(ctx.request.wire())  # these bodies are written in model order
            for r, m in zip(raws, wire["messages"]):
                if r is not None:
                    assert r == orjson.dumps(m)
            assert check_anthropic(sent.body, ctx.original) == []
            compacted += bool(sent.events("compaction"))
            # the validator: what a fresh process says, for the body and for broken variants of it
            warm = validate_rewrite(A, wire, ctx.original, original_raw=ctx.message_raw, raw=raws)
            assert warm == [] == _cold(A, wire, ctx.original)
            for v in _broken_variants(wire):
                got = validate_rewrite(A, v, ctx.original, original_raw=ctx.message_raw)
                assert got == _cold(A, v, ctx.original), f"request {k}: a resumed validation differs from a fresh one"
                assert got, "every variant is broken"
        assert rewritten >= 5
        assert compacted >= 1, "the session no longer reaches compaction: lower its window"
        if not moving_breakpoint:
            assert any(r > 0 for r in spy.resumed), "the validator never resumed from a checkpoint"
            # the typed messages of the first request are the last one's (the conversation keeps them)
            first, last = sent_all[0][1].ctx.history.entries, sent_all[-1][1].ctx.history.entries
            assert all(x.obj is y.obj for x, y in zip(first[:-1], last))
        # no request changed what an earlier one parsed (the histories are shared dicts)
        for raw, sent in sent_all:
            assert sent.ctx.original == orjson.loads(raw)
    finally:
        h.close()


def test_sending_the_same_bodies_to_a_fresh_runtime_gives_the_same_bytes(tmp_path):
    """Stubs are re-applied from the session's records: a fresh runtime (no pool, no known history, no
    checkpoints) on the same home must send the same bytes for the last request."""
    ov = settings_overrides(window=20_000, stages=["strip", "clearing"],
                            clearing={"trigger_tokens": 3000, "clear_at_least": 500, "keep_recent": 2})
    home = tmp_path / "home"
    home.mkdir()
    h = Harness(home, profile="claude-code", overrides=ov)
    full = anthropic_tool_loop(6, result_words=250, session="pp-2")
    msgs = full["messages"][:-1]
    top = {k: v for k, v in full.items() if k != "messages"}
    last = None
    for n in range(3, len(msgs) + 1, 2):
        last = h.send(A, {**top, "messages": msgs[:n]})
    assert last is not None and last.changed
    h.close()
    h2 = Harness(home, profile="claude-code", overrides=ov)
    try:
        again = h2.send(A, {**top, "messages": msgs[:len(msgs) if len(msgs) % 2 else len(msgs) - 1]})
        assert again.outcome.body == last.outcome.body
    finally:
        h2.close()


# ---------------------------------------------------------------------------------------------------
# the validator's checkpoints


def test_a_checkpoint_keeps_the_problems_of_the_history_it_stands_for(monkeypatch):
    spy = _SpyCheckpoints()
    body = orjson.loads(orjson.dumps(anthropic_tool_loop(4, result_words=20)))
    orig1 = {**body, "messages": body["messages"][:9]}
    new1 = copy.deepcopy(orig1)
    new1["messages"][1]["content"].append({"type": "text", "text": " "})  # a problem early on
    # (a different last message too: a checkpoint is found by the number of messages and the last one's
    # bytes, and the original's own check, run when there are problems, would take the same place)
    new1["messages"][8]["content"].append({"type": "text", "text": "and one more thing"})
    p1 = validate_rewrite(A, new1, orig1, checkpoints=spy)
    assert p1 and p1 == _cold(A, new1, orig1)
    orig2 = {**body, "messages": body["messages"][:11]}
    new2 = {**new1, "messages": new1["messages"] + body["messages"][9:11]}
    spy.resumed.clear()
    p2 = validate_rewrite(A, new2, orig2, checkpoints=spy)
    assert spy.resumed and spy.resumed[0] == 9, "the second body should resume from the first one's checkpoint"
    assert p2 == _cold(A, new2, orig2) and any("empty text block" in p for p in p2)


def test_a_checkpoint_is_right_under_other_original_role_pairs(monkeypatch):
    """The fold does not read the original's role pairs (a consecutive pair is kept or dropped after it),
    so a checkpoint made under other pairs is resumed from and gives what a cold check gives."""
    spy = _SpyCheckpoints()
    u = lambda t: {"role": "user", "content": [{"type": "text", "text": t}]}  # noqa: E731
    a = lambda t: {"role": "assistant", "content": [{"type": "text", "text": t}]}  # noqa: E731
    new = {"model": "m", "messages": [u("one"), u("two"), a("three"), u("four")]}
    alternating = {"model": "m", "messages": [u("one"), a("x"), u("two"), a("three"), u("four")]}
    p1 = validate_rewrite(A, new, alternating, checkpoints=spy)
    assert any("consecutive" in p for p in p1)
    # the same new messages, against an original that has a user,user pair itself: no problem
    same_pairs = {"model": "m", "messages": [u("one"), u("two"), a("three"), u("four")]}
    longer = {"model": "m", "messages": new["messages"] + [a("five"), u("six")]}
    longer_orig = {"model": "m", "messages": same_pairs["messages"] + [a("five"), u("six")]}
    spy.resumed.clear()
    p2 = validate_rewrite(A, longer, longer_orig, checkpoints=spy)
    assert spy.resumed[0] == 4  # the first body's checkpoint, made under other pairs
    assert p2 == [] == _cold(A, longer, longer_orig)
    # and back: the pairs without user,user again
    alt_longer = {"model": "m", "messages": alternating["messages"] + [a("five"), u("six")]}
    spy.resumed.clear()
    p3 = validate_rewrite(A, longer, alt_longer, checkpoints=spy)
    assert spy.resumed[0] == 6  # the second body's
    assert p3 == _cold(A, longer, alt_longer) and any("consecutive" in p for p in p3)


def test_responses_input_history_is_known_too(cw_home):
    """The Responses API keeps its history in ``input``: growing bodies parse as orjson does, share the
    previous request's items, and a pipeline session with clearing sends what a fresh runtime sends."""
    from tests.support.stages import Harness, responses_tool_loop, settings_overrides

    rb = RecentBodies()
    body = responses_tool_loop(4, result_words=60)
    prev = None
    for i in range(4):
        body = {**body, "input": body["input"] + [
            {"type": "function_call", "call_id": f"g{i}", "name": "read_file", "arguments": '{"path":"x"}'},
            {"type": "function_call_output", "call_id": f"g{i}", "output": f"line {i}\n" * 30}]}
        raw = orjson.dumps(body)
        data, known = rb.parse(raw, "input")
        assert data == orjson.loads(raw) and list(data) == list(body)
        if prev is None:
            assert known is None
        else:
            assert known is not None and known.count == len(prev["input"])
            assert all(a is b for a, b in zip(data["input"], prev["input"]))
        rb.remember(raw, data, [orjson.dumps(x) for x in data["input"]], known, "input")
        prev = data
    # a "messages" history is not offered to an "input" body, and the other way round
    assert rb.parse(orjson.dumps({"model": "m", "messages": body["input"]}))[1] is None

    cfg = dict(window=200_000, stages=["clearing"], clearing={"trigger_tokens": 3000, "clear_at_least": 500, "keep_recent": 1})
    h = Harness(cw_home / "a", overrides=settings_overrides(**cfg))
    bodies, b = [], responses_tool_loop(6, result_words=300)
    for i in range(6):
        b = {**b, "input": b["input"] + [{"type": "function_call", "call_id": f"h{i}", "name": "read_file", "arguments": "{}"},
                                         {"type": "function_call_output", "call_id": f"h{i}", "output": "data " * 300}]}
        bodies.append(b)
    sent = [h.send(ApiKind.OPENAI_RESPONSES, copy.deepcopy(x)) for x in bodies]
    assert [s.ctx.known_messages for s in sent][1:] == [len(x["input"]) for x in bodies[:-1]]
    assert sum(s.changed for s in sent) >= 4
    h.close()
    # the same session through a runtime that knows no history: the same bytes go upstream
    g = Harness(cw_home / "b", overrides=settings_overrides(**cfg))
    for x, s in zip(bodies, sent):
        g.rt.recent.clear()
        t = g.send(ApiKind.OPENAI_RESPONSES, copy.deepcopy(x))
        assert t.ctx.known_messages == 0
        assert (t.outcome.body, t.outcome.reason) == (s.outcome.body, s.outcome.reason)
    g.close()
