"""Frozen typed messages and the conversation's memory of them (models/base.py, history.py).

Typed messages are shared between the requests of a conversation because nothing can change them: a
stage puts an edited copy in the request's list. Each test here checks one side of that contract: a
write in place fails loudly (directly, and as a stage through the pipeline), a conversation hands
the very same objects to its next request only for the very same bytes, and what is remembered with a
message (its count, a stage's result, an edited copy, a carried slot) is what computing it afresh gives.
"""

from __future__ import annotations

import copy
import pickle

import orjson
import pytest
from pydantic import ValidationError

from contextwarden import hookimpl
from contextwarden.core.runtime import Runtime
from contextwarden.models import anthropic as am
from contextwarden.models import openai_chat as oc
from contextwarden.models.base import ApiKind, FrozenList
from contextwarden.request import lifecycle
from contextwarden.request.pipeline import _typed, serialise, wire_of
from contextwarden.wire.history import Conversation, Conversations, History
from tests.support.stages import stage_runtime

A = ApiKind.ANTHROPIC


def conversation(turns: int = 3, seed: int = 0) -> list[dict]:
    """Anthropic messages: user text, assistant text + tool_use, user tool_result, ... ending with a user."""
    msgs: list[dict] = []
    for t in range(turns):
        msgs.append({"role": "user", "content": [{"type": "text", "text": f"task {seed}.{t}: fix it"}]})
        msgs.append({"role": "assistant", "content": [
            {"type": "text", "text": f"reading file {t}"},
            {"type": "tool_use", "id": f"tu_{seed}_{t}", "name": "Read", "input": {"file_path": f"src/m{t}.py"}}]})
        msgs.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"tu_{seed}_{t}", "content": f"def f{t}(): return {t}"},
            {"type": "text", "text": f"note {t}"}]})
    return msgs


def prepared(conv: Conversation, msgs: list[dict]) -> History:
    raws, _ = conv.message_bytes(msgs)
    return History(A, conv, raws, conv.typed(msgs, raws, am.Message.model_validate))


def stub_build(base: am.Message, text: str):
    """An edited copy as the clearing stage builds one: the tool_result replaced, the rest shared."""
    def build():
        blocks = [b.model_copy(update={"content": text}) if b.type == "tool_result" else b for b in base.content]
        return base.model_copy(update={"content": blocks})
    return build


# ---------------------------------------------------------------------------------------------------
# frozen


MUTATIONS = [
    ("append", lambda l: l.append(1)), ("extend", lambda l: l.extend([1])), ("insert", lambda l: l.insert(0, 1)),
    ("remove", lambda l: l.remove(l[0])), ("pop", lambda l: l.pop()), ("clear", lambda l: l.clear()),
    ("sort", lambda l: l.sort(key=id)), ("reverse", lambda l: l.reverse()),
    ("setitem", lambda l: l.__setitem__(0, 1)), ("delitem", lambda l: l.__delitem__(0)),
    ("iadd", lambda l: l.__iadd__([1])), ("imul", lambda l: l.__imul__(2)),
]


@pytest.mark.parametrize("name,mutate", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_a_typed_list_cannot_be_changed_in_place(name, mutate):
    msg = am.Message.model_validate(conversation(1)[1])
    assert type(msg.content) is FrozenList
    before = list(msg.content)
    with pytest.raises(TypeError, match="frozen"):
        mutate(msg.content)
    assert list(msg.content) == before


def test_a_typed_message_or_block_cannot_be_assigned_to():
    msg = am.Message.model_validate(conversation(1)[1])
    with pytest.raises(ValidationError, match="frozen"):
        msg.content = "x"
    with pytest.raises(ValidationError, match="frozen"):
        msg.content[0].text = "x"
    with pytest.raises(ValidationError, match="frozen"):
        del msg.role
    chat = oc.ChatMessage.model_validate({"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
    assert type(chat.tool_calls) is FrozenList
    with pytest.raises(ValidationError, match="frozen"):
        chat.tool_calls[0].function.arguments = "{\"a\": 1}"
    with pytest.raises(TypeError, match="frozen"):
        chat.tool_calls.append(chat.tool_calls[0])
    assert msg.wire() == conversation(1)[1]


def test_an_edited_copy_is_frozen_too_and_the_request_is_not():
    msg = am.Message.model_validate(conversation(1)[1])
    new = msg.model_copy(update={"content": list(msg.content) + [am.TextBlock(type="text", text="more")]})
    assert type(new.content) is FrozenList and len(new.content) == 3 and len(msg.content) == 2
    with pytest.raises(TypeError):
        new.content.append(new.content[0])
    req = am.MessagesRequest.model_validate({"model": "m", "messages": conversation(1)})
    req.messages[0] = new  # the request's own list: a stage puts copies in here
    req.messages = req.messages[:2]
    assert req.wire()["messages"][0] == new.wire()
    # copies and pickles rebuild a frozen list without appending to it
    for twin in (copy.deepcopy(new), pickle.loads(pickle.dumps(new)), copy.copy(new.content)):
        got = twin.content if hasattr(twin, "content") else twin
        assert type(got) is FrozenList and list(got) == list(new.content) or got == new.content


class Mutator:
    """A stage that breaks the contract: it writes to a typed message in place."""

    def __init__(self, how: str) -> None:
        self.how = how

    @hookimpl
    def cw_request(self, ctx) -> None:
        last = ctx.request.messages[-1]
        if self.how == "assign":
            last.content = "rewritten in place"
        else:
            last.content.append(am.TextBlock(type="text", text="appended in place"))


class Copier:
    """The same edit, by the contract: an edited copy put in the request's list."""

    @hookimpl
    def cw_request(self, ctx) -> None:
        last = ctx.request.messages[-1]
        ctx.request.messages[-1] = last.model_copy(update={"content": list(last.content) + [
            am.TextBlock(type="text", text="added by copy")]})


def _runtime(tmp_path, stage) -> Runtime:
    return stage_runtime(tmp_path / "home", [("probe", stage)])


def _send(rt: Runtime, msgs: list[dict], n: int = 0):
    raw = orjson.dumps({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": msgs,
                        "metadata": {"user_id": "user_x_account_y_session_history"}})
    ctx, out = lifecycle.send(rt, A, "api.anthropic.com", "/v1/messages",
                              [("content-type", "application/json"), ("x-api-key", "sk-test")], raw, f"flow-{n}")
    return ctx, out, [e for e in rt.bus.recent if e.flow_id == ctx.flow_id]


@pytest.mark.parametrize("how", ["assign", "append"])
def test_a_stage_that_mutates_a_message_in_place_fails_loudly(tmp_path, how):
    rt = _runtime(tmp_path, Mutator(how))
    try:
        msgs = conversation(2)
        ctx, out, events = _send(rt, msgs)
        [stage] = [e.data for e in events if e.type == "stage"]
        assert stage["status"] == "error" and "frozen" in stage["error"]
        assert any(e.type == "error" and e.data.get("stage") == "probe" for e in events)
        assert out.fallback is not None  # the client's request still goes (fail open), without the stage's work
        assert ctx.history.entries[-1].obj.wire() == msgs[-1], "the shared message was changed"
        # the next request of the conversation gets the same, unchanged message
        ctx2, _, _ = _send(rt, msgs, 1)
        assert ctx2.history.entries[-1].obj is ctx.history.entries[-1].obj
        assert ctx2.history.entries[-1].obj.wire() == msgs[-1]
    finally:
        rt.close()


def test_a_stage_that_edits_by_copy_goes_through(tmp_path):
    rt = _runtime(tmp_path, Copier())
    try:
        msgs = conversation(2)
        ctx, out, events = _send(rt, msgs)
        assert out.reason == "rewritten" and out.fallback is None
        assert orjson.loads(out.body)["messages"][-1]["content"][-1] == {"type": "text", "text": "added by copy"}
        assert ctx.history.entries[-1].obj.wire() == msgs[-1]  # what the request was prepared with is untouched
    finally:
        rt.close()


# ---------------------------------------------------------------------------------------------------
# the conversation


def test_the_next_request_gets_the_same_typed_messages_for_the_same_bytes():
    conv = Conversation(("k",))
    msgs = conversation(3)
    h1 = prepared(conv, msgs)
    assert [e.obj.wire() for e in h1.entries] == msgs
    nxt = copy.deepcopy(msgs)  # equal dicts, new objects: the bytes are handed on
    nxt[-1]["content"][1]["text"] = "note changed"  # (the client changed its last message)
    nxt += conversation(1, seed=9)
    h2 = prepared(conv, nxt)
    assert all(a.obj is b.obj for a, b in zip(h1.entries[:-1], h2.entries)), "a known message was parsed again"
    assert h2.entries[len(msgs) - 1].obj is not h1.entries[-1].obj
    assert [e.obj.wire() for e in h2.entries] == nxt  # what parsing the bytes afresh gives
    assert all(e.raw == orjson.dumps(m) for e, m in zip(h2.entries, nxt))


def test_memo_is_computed_once_per_message_and_remembered_across_requests():
    conv = Conversation(("k",))
    msgs = conversation(2)
    calls: list[int] = []

    def compute(i):
        calls.append(i)
        return f"v{i}-{len(calls)}"

    h = prepared(conv, msgs)
    m0 = h.entries[0].obj
    v = h.memo(m0, "k", lambda: compute(0))
    assert h.memo(m0, "k", lambda: compute(0)) == v and calls == [0]
    assert h.memo(m0, "other", lambda: compute(0)) != v and calls == [0, 0]
    h2 = prepared(conv, copy.deepcopy(msgs))
    assert h2.entries[0].obj is m0 and h2.memo(m0, "k", lambda: compute(0)) == v and calls == [0, 0]
    # a message that is none of the request's: computed every time
    stranger = am.Message.model_validate(msgs[0])
    h2.memo(stranger, "k", lambda: compute(7))
    h2.memo(stranger, "k", lambda: compute(7))
    assert calls == [0, 0, 7, 7]
    # memos equals memo of each, whatever the order
    objs = [e.obj for e in h2.entries]
    first = h2.memos(objs, "facts", lambda m: (m.role, len(calls)))
    n = len(calls)
    assert h2.memos(objs, "facts", lambda m: calls.append(1)) == first and len(calls) == n
    assert h2.memos([objs[5], objs[0]], "facts", lambda m: calls.append(1)) == [first[5], first[0]] and len(calls) == n


def test_an_edited_copy_and_its_wire_form_are_reused_by_the_next_request():
    """wire_of reuses an edited copy's wire form and its bytes; serialise copies them in."""
    from types import SimpleNamespace

    conv = Conversation(("k",))
    msgs = conversation(3)
    data = {"model": "claude-x", "messages": msgs, "system": [{"type": "text", "text": "sys"}], "max_tokens": 10}
    prev = prev_wire = None
    built: list[int] = []
    for round_ in range(3):
        raws, _ = conv.message_bytes(msgs)
        model, h = _typed(A, data, raws, conv)
        reqmsgs = model.messages
        new = h.derive_all([(reqmsgs[i], b"stub", lambda i=i: built.append(i) or stub_build(reqmsgs[i], "STUB")())
                            for i in (2, 5)])
        for i, m in zip((2, 5), new):
            reqmsgs[i] = m
        ctx = SimpleNamespace(request=model, history=h, original=data)
        wire, wraws = wire_of(ctx)
        assert wire == model.wire()
        assert serialise(wire, wraws) == orjson.dumps(wire) == orjson.dumps(model.wire())
        assert wire["messages"][0] is msgs[0]  # unchanged: the client's own dict
        assert wraws[0] is raws[0] and wraws[2] == orjson.dumps(wire["messages"][2])
        assert h.entries[2].obj.wire() == msgs[2]  # the base is untouched
        if round_:
            assert new[0] is prev[0] and wire["messages"][2] is prev_wire, "edited copy or its wire form not reused"
        prev, prev_wire = new, wire["messages"][2]
    assert built == [2, 5], "an edited copy was built again"
    # another edit of the same message is another copy; a message that is not the request's is built
    raws, _ = conv.message_bytes(msgs)
    model, h = _typed(A, data, raws, conv)
    other = h.derive_all([(model.messages[2], b"other", stub_build(model.messages[2], "OTHER"))])[0]
    assert other is not prev[0] and other.content[0].content == "OTHER"
    foreign = am.Message.model_validate(msgs[2])
    assert h.derive_all([(foreign, b"stub", stub_build(foreign, "S"))])[0] is not prev[0] and h.entry_of(foreign) is None


def test_a_carried_slot_holds_only_while_the_messages_it_is_about_are_the_same():
    conv = Conversation(("k",))
    msgs = conversation(3)
    h = prepared(conv, msgs)
    h.carry_on(("stage", "x"), 4, "about the first 4")
    h2 = prepared(conv, copy.deepcopy(msgs) + conversation(1, seed=5))
    assert h2.carried(("stage", "x")) == (4, "about the first 4")
    assert h2.carried(("stage", "y")) is None
    changed = copy.deepcopy(msgs)
    changed[3]["content"][0]["text"] = "an earlier message changed"
    h3 = prepared(conv, changed)
    assert h3.carried(("stage", "x")) is None
    h4 = prepared(conv, copy.deepcopy(msgs)[:3])  # shorter than what the slot is about
    assert h4.carried(("stage", "x")) is None


def test_conversations_stay_within_their_bounds():
    convs = Conversations(max_count=3, max_bytes=10**9)
    for i in range(6):
        prepared(convs.get(("c", i)), conversation(2, seed=i))
    assert len(convs) == 3
    one = sum(map(len, (orjson.dumps(m) for m in conversation(2))))
    convs = Conversations(max_count=100, max_bytes=one * 3)
    for i in range(6):
        prepared(convs.get(("c", i)), conversation(2, seed=i))
        convs.get(("c", i))
    assert len(convs) <= 4  # (a conversation's bytes are counted once it has messages)
    assert convs.get(("c", 5)).last.msgs, "the latest conversation is kept"
