"""The typed-message pool (typedpool.py) and the write tracking it relies on (models/base.py).

Typed messages are lent from one request to the next, keyed by their exact JSON bytes: each test here
checks that lending never hands out an object another request holds or one a stage changed, and that
what is handed out is what parsing the bytes afresh would give.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import orjson
import pytest

from contextwarden.models import anthropic as am
from contextwarden.models import openai_chat as oc
from contextwarden.models.base import ApiKind, TrackedList, touched, touched_list, touches
from contextwarden.pipeline import _typed, serialise, wire_of
from contextwarden.typedpool import Entry, TypedPool

A = ApiKind.ANTHROPIC


# ---------------------------------------------------------------------------------------------------
# helpers


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


def raws_of(msgs: list[dict]) -> list[bytes]:
    return [orjson.dumps(m) for m in msgs]


def lease(pool: TypedPool, msgs: list[dict], raws: list[bytes], api: ApiKind = A):
    cls = am.Message if api is ApiKind.ANTHROPIC else oc.ChatMessage
    return pool.lease(api, msgs, raws, cls.model_validate)


def objs(ls) -> list:
    return [e.obj for e in ls.entries]


def stub_build(base: am.Message, text: str):
    """A derived message as the clearing stage builds one: every block copied, the tool_result replaced."""
    def build():
        blocks = []
        for b in base.content:
            if b.type == "tool_result":
                blocks.append(b.model_copy(update={"content": text}))
            else:
                blocks.append(b.model_copy())
        return base.model_copy(update={"content": TrackedList(blocks)})
    return build


def finish_derived(ls, obj) -> None:
    """What Pipeline.finish (wire_of) does to a derived message that goes upstream: learn its wire form."""
    e = ls.derived_entry(obj)
    assert e is not None
    e.wire = obj.wire()
    e.raw = orjson.dumps(e.wire)


# ---------------------------------------------------------------------------------------------------
# lending


def test_a_lent_message_is_not_lent_to_a_concurrent_lease():
    pool = TypedPool()
    msgs = conversation()
    raws = raws_of(msgs)
    first = lease(pool, msgs, raws)
    assert pool.give_back(first) == len(msgs)  # untouched: every message goes back
    a = lease(pool, msgs, raws)  # takes them from the pool
    assert all(x is y for x, y in zip(objs(a), objs(first))), "an untouched request's messages are lent to the next one"
    b = lease(pool, msgs, raws)  # a concurrent request with the same messages, while `a` holds them
    for x, y, m in zip(objs(a), objs(b), msgs):
        assert x is not y, "a message lent to one request was lent to a second one at the same time"
        assert y.wire() == m and x.wire() == m
    # the loose path too (no run): message 0 touched in the first request, the others go back one by one
    pool2 = TypedPool()
    c = lease(pool2, msgs, raws)
    c.entries[0].obj.role = "user"
    assert pool2.give_back(c) == len(msgs) - 1
    d = lease(pool2, msgs, raws)
    e = lease(pool2, msgs, raws)
    assert objs(d)[0] is not objs(c)[0]
    assert all(x is y for x, y in zip(objs(d)[1:], objs(c)[1:]))
    assert all(x is not y for x, y in zip(objs(d), objs(e)))
    assert [x.wire() for x in objs(e)] == msgs


def _set_text(m):
    m.content[0].text = "EDITED"


def _append(m):
    m.content.append(am.TextBlock(type="text", text="EDITED"))


def _replace_item(m):
    m.content[0] = am.TextBlock(type="text", text="EDITED")


def _pop(m):
    m.content.pop()


def _assign_message(m):
    m.content = [am.TextBlock(type="text", text="EDITED")]


def _assign_role(m):
    m.role = "user"


def _delete_item(m):
    del m.content[0]


def _insert(m):
    m.content.insert(0, am.TextBlock(type="text", text="EDITED"))


def _iadd(m):
    c = m.content
    c += [am.TextBlock(type="text", text="EDITED")]


def _reverse(m):
    m.content.reverse()


def _set_tool_input(m):
    m.content[1].input = {"file_path": "EDITED"}


def _extra_attr(m):
    m.content[0].cache_control = {"type": "ephemeral"}


EDITS = [_set_text, _append, _replace_item, _pop, _assign_message, _assign_role, _delete_item, _insert, _iadd,
         _reverse, _set_tool_input, _extra_attr]


@pytest.mark.parametrize("edit", EDITS, ids=[f.__name__.strip("_") for f in EDITS])
def test_a_touched_message_is_not_given_back(edit):
    pool = TypedPool()
    msgs = conversation()
    original = copy.deepcopy(msgs)
    raws = raws_of(msgs)
    first = lease(pool, msgs, raws)
    victim = first.entries[1].obj  # the assistant message: text + tool_use
    before = victim.wire()
    edit(victim)
    assert victim.wire() != before  # the edit is real
    assert not first.quiet()
    assert not first.entries[1].pristine()
    assert all(first.entries[i].pristine() for i in range(len(msgs)) if i != 1)
    back = pool.give_back(first)
    assert back == len(msgs) - 1
    second = lease(pool, msgs, raws)
    got = second.entries[1].obj
    assert got is not victim, f"a message changed by {edit.__name__} was lent again"
    assert got.wire() == original[1], "the next request must see the message as the client sent it, not the edit"
    assert msgs == original  # the client's dicts were not changed by any edit
    # the untouched ones came back (message 0 as the run, the rest one by one)
    for i in range(len(msgs)):
        if i != 1:
            assert second.entries[i].obj is first.entries[i].obj
    assert [o.wire() for o in objs(second)] == original


def test_a_touched_chat_tool_call_is_not_given_back():
    pool = TypedPool()
    msgs = [{"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "a b c"},
            {"role": "user", "content": [{"type": "text", "text": "more"}]}]
    original = copy.deepcopy(msgs)
    raws = raws_of(msgs)
    for edit in (lambda m: setattr(m.tool_calls[0].function, "arguments", '{"x":1}'),
                 lambda m: m.tool_calls.append(oc.ToolCall(id="c2")),
                 lambda m: setattr(m.tool_calls[0], "id", "zz")):
        first = lease(pool, msgs, raws, ApiKind.OPENAI_CHAT)
        assert type(first.entries[1].obj.tool_calls) is TrackedList
        victim = first.entries[1].obj
        edit(victim)
        pool.give_back(first)
        second = lease(pool, msgs, raws, ApiKind.OPENAI_CHAT)
        assert second.entries[1].obj is not victim
        assert [o.wire() for o in objs(second)] == original
        assert all(second.entries[i].obj is first.entries[i].obj for i in (0, 2, 3))
        pool.give_back(second)


def test_pristine_sees_a_write_after_an_earlier_check():
    pool = TypedPool()
    msgs = conversation()
    ls = lease(pool, msgs, raws_of(msgs))
    e = ls.entries[2]
    assert e.pristine() and e.pristine()  # the second look takes the short path (touch count unchanged)
    ls.entries[0].obj.content[0].text = "other message"  # a write elsewhere: the count moves
    assert e.pristine()
    e.obj.content[0].content = "changed"  # a block inside this message
    assert not e.pristine()
    assert ls.original_index(e.obj) is None and ls.original_index(ls.entries[1].obj) == 1


# ---------------------------------------------------------------------------------------------------
# runs


def test_an_untouched_request_comes_back_as_a_run():
    pool = TypedPool()
    msgs = conversation(4)
    raws = raws_of(msgs)
    first = lease(pool, msgs, raws)
    assert pool.misses == len(msgs) and pool.hits == 0
    assert pool.give_back(first) == len(msgs)
    assert len(pool) == 1  # one run, not one entry per message
    # the next request: the very same bytes objects plus a new message
    new = {"role": "assistant", "content": [{"type": "text", "text": "done"}]}
    msgs2 = msgs + [new]
    raws2 = raws + [orjson.dumps(new)]
    second = lease(pool, msgs2, raws2)
    assert all(a is b for a, b in zip(objs(second), objs(first))), "the run's typed messages were not taken back"
    assert objs(second)[-1].wire() == new
    assert pool.hits == len(msgs) and pool.misses == len(msgs) + 1
    assert len(pool) == 0  # the run is lent, not shared
    third = lease(pool, msgs2, raws2)  # concurrently: nothing to take
    assert all(a is not b for a, b in zip(objs(third), objs(second)))


def test_a_request_differing_in_the_middle_gets_the_run_up_to_there():
    """A client that moves its cache breakpoint changes one message and keeps the ones before: those
    come from the run, the changed one and the rest are parsed anew."""
    pool = TypedPool()
    msgs = conversation(3)
    raws = raws_of(msgs)
    first = lease(pool, msgs, raws)
    pool.give_back(first)
    changed = copy.deepcopy(msgs)
    changed[4]["content"][0]["text"] = "the client rewrote this one"
    raws_b = list(raws)
    raws_b[4] = orjson.dumps(changed[4])
    other = lease(pool, changed, raws_b)
    o, f = objs(other), objs(first)
    assert all(a is b for a, b in zip(o[:4], f[:4])), "the messages before the change are the run's"
    assert all(a is not b for a, b in zip(o[4:], f[4:])), "a run was lent past the change"
    assert [x.wire() for x in o] == changed
    # the run was taken: a second request with the first history does not get those objects too
    again = lease(pool, msgs, raws)
    assert all(a is not b for a, b in zip(objs(again), o))
    pool.give_back(other)
    # a shorter request (the client dropped its last messages) gets the run for what it has
    short = lease(pool, changed[:3], raws_b[:3])
    assert all(a is b for a, b in zip(objs(short), o[:3]))
    assert [x.wire() for x in objs(short)] == changed[:3]


def test_a_run_is_cut_at_the_first_touched_message():
    pool = TypedPool()
    msgs = conversation(3)
    raws = raws_of(msgs)
    first = lease(pool, msgs, raws)
    first.entries[5].obj.content.pop()
    assert pool.give_back(first) == len(msgs) - 1
    second = lease(pool, msgs, raws)
    for i, (a, b) in enumerate(zip(objs(second), objs(first))):
        assert (a is b) == (i != 5), i
    assert [o.wire() for o in objs(second)] == msgs


# ---------------------------------------------------------------------------------------------------
# derived messages


def test_derive_reuses_the_same_edit_of_the_same_message():
    pool = TypedPool()
    msgs = conversation(3)
    raws = raws_of(msgs)
    calls = []

    def counting(build):
        def b():
            calls.append(1)
            return build()
        return b

    ls = lease(pool, msgs, raws)
    base = ls.entries[2].obj
    d1 = ls.derive(base, b"stub-A", counting(stub_build(base, "STUB A")))
    assert d1 is not base and len(calls) == 1
    assert d1.content[0].content == "STUB A" and base.content[0].content == msgs[2]["content"][0]["content"]
    assert not touched(base) and ls.entries[2].pristine() and ls.original_index(base) == 2
    assert ls.quiet(), "building a derived message by model_copy(update=...) writes nothing"
    assert all(b1 is not b0 for b1, b0 in zip(d1.content, base.content))
    finish_derived(ls, d1)
    pool.give_back(ls)

    ls2 = lease(pool, msgs, raws)
    base2 = ls2.entries[2].obj
    assert base2 is base  # the run
    d2 = ls2.derive(base2, b"stub-A", counting(stub_build(base2, "STUB A")))
    assert d2 is d1 and len(calls) == 1, "the same edit of the same message must come from the pool, not be built again"
    assert ls2.derived_entry(d2).wire == d2.wire()
    d3 = ls2.derive(base2, b"stub-B", counting(stub_build(base2, "STUB B")))
    assert d3 is not d1 and len(calls) == 2 and d3.content[0].content == "STUB B"
    # (the pool lends a derived message once: the same key again in the same request builds a new one)
    d4 = ls2.derive(base2, b"stub-A", counting(stub_build(base2, "STUB A")))
    assert d4 is not d1 and len(calls) == 3 and d4.wire() == d1.wire()


def test_a_touched_derived_message_is_not_reused():
    pool = TypedPool()
    msgs = conversation(3)
    raws = raws_of(msgs)
    ls = lease(pool, msgs, raws)
    base = ls.entries[2].obj
    d1 = ls.derive(base, b"k", stub_build(base, "STUB"))
    finish_derived(ls, d1)
    pool.give_back(ls)

    ls2 = lease(pool, msgs, raws)
    d2 = ls2.derive(ls2.entries[2].obj, b"k", stub_build(ls2.entries[2].obj, "STUB"))
    assert d2 is d1
    d2.content[1].text = "a stage edited the derived message"
    assert ls2.derived_entry(d2) is None
    pool.give_back(ls2)

    ls3 = lease(pool, msgs, raws)
    base3 = ls3.entries[2].obj
    d3 = ls3.derive(base3, b"k", stub_build(base3, "STUB"))
    assert d3 is not d1, "a derived message a stage changed was lent again under its edit key"
    assert d3.content[1].text == msgs[2]["content"][1]["text"] and d3.content[0].content == "STUB"


def test_a_derived_message_without_a_known_wire_form_is_not_given_back():
    pool = TypedPool()
    msgs = conversation(2)
    raws = raws_of(msgs)
    ls = lease(pool, msgs, raws)
    d1 = ls.derive(ls.entries[2].obj, b"k", stub_build(ls.entries[2].obj, "S"))
    assert pool.give_back(ls) == len(msgs)  # not the derived one: it never went upstream
    ls2 = lease(pool, msgs, raws)
    assert ls2.derive(ls2.entries[2].obj, b"k", stub_build(ls2.entries[2].obj, "S")) is not d1


def test_derive_of_a_touched_or_foreign_base_is_built_and_not_pooled():
    pool = TypedPool()
    msgs = conversation(2)
    raws = raws_of(msgs)
    ls = lease(pool, msgs, raws)
    base = ls.entries[2].obj
    base.content[1].text = "touched"
    d = ls.derive(base, b"k", stub_build(base, "S"))
    assert ls.derived == {} and d.content[1].text == "touched"
    foreign = am.Message.model_validate(msgs[2])
    d2 = ls.derive(foreign, b"k", stub_build(foreign, "S"))
    assert ls.derived == {} and d2.content[0].content == "S"


def test_derive_all_is_derive_of_each():
    pool = TypedPool()
    msgs = conversation(3)
    raws = raws_of(msgs)
    ls = lease(pool, msgs, raws)
    bases = [ls.entries[2].obj, ls.entries[5].obj]
    out = ls.derive_all([(b, ("r", i), stub_build(b, f"S{i}")) for i, b in enumerate(bases)])
    assert [o.content[0].content for o in out] == ["S0", "S1"]
    assert all(not touched(b) for b in bases)
    for o in out:
        finish_derived(ls, o)
    pool.give_back(ls)
    ls2 = lease(pool, msgs, raws)
    bases2 = [ls2.entries[2].obj, ls2.entries[5].obj]
    built = []
    out2 = ls2.derive_all([(b, ("r", i), lambda b=b, i=i: built.append(i) or stub_build(b, f"S{i}")())
                           for i, b in enumerate(bases2)] + [(bases2[0], ("r", 9), lambda: built.append(9) or stub_build(bases2[0], "S9")())])
    assert out2[0] is out[0] and out2[1] is out[1] and built == [9]
    assert out2[2].content[0].content == "S9"


def test_derived_messages_go_upstream_as_their_remembered_wire_form():
    """wire_of reuses a derived message's wire form and its bytes; serialise copies them in."""
    pool = TypedPool()
    rt = SimpleNamespace(typed=pool)
    msgs = conversation(3)
    data = {"model": "claude-x", "messages": msgs, "system": [{"type": "text", "text": "sys"}], "max_tokens": 10}
    raws = raws_of(msgs)
    for round_ in range(3):
        model, ls = _typed(rt, A, data, raws)
        reqmsgs = model.messages
        new = ls.derive_all([(reqmsgs[i], b"stub", stub_build(reqmsgs[i], "STUB")) for i in (2, 5)])
        for i, m in zip((2, 5), new):
            reqmsgs[i] = m
        ctx = SimpleNamespace(request=model, lease=ls, original=data)
        wire, wraws = wire_of(ctx)
        assert wire == model.wire()
        assert serialise(wire, wraws) == orjson.dumps(wire) == orjson.dumps(model.wire())
        assert wire["messages"][0] is msgs[0]  # untouched: the client's own dict
        assert wraws[0] is raws[0] and wraws[2] == orjson.dumps(wire["messages"][2])
        if round_:
            assert new[0] is prev[0] and wire["messages"][2] is prev_wire, "derived message or its wire form not reused"
        prev, prev_wire = new, wire["messages"][2]
        pool.give_back(ls)


# ---------------------------------------------------------------------------------------------------
# memo


def test_memo_is_computed_once_while_untouched_and_every_time_once_touched():
    pool = TypedPool()
    msgs = conversation(2)
    raws = raws_of(msgs)
    calls: list[int] = []

    def compute(i):
        calls.append(i)
        return f"v{i}-{len(calls)}"

    ls = lease(pool, msgs, raws)
    m0, m1 = ls.entries[0].obj, ls.entries[1].obj
    v = ls.memo(m0, "k", lambda: compute(0))
    assert ls.memo(m0, "k", lambda: compute(0)) == v and calls == [0]
    assert ls.memo(m0, "other", lambda: compute(0)) != v and calls == [0, 0]  # another key
    w = ls.memo(m1, "k", lambda: compute(1))
    m1.content[0].text = "changed"
    w2 = ls.memo(m1, "k", lambda: compute(1))
    w3 = ls.memo(m1, "k", lambda: compute(1))
    assert w2 != w and w3 != w2 and calls == [0, 0, 1, 1, 1], "a touched message's result must be computed every time"
    assert ls.memo(m0, "k", lambda: compute(0)) == v  # the untouched one still remembered (slow path now)
    pool.give_back(ls)
    ls2 = lease(pool, msgs, raws)
    assert ls2.entries[0].obj is m0
    assert ls2.memo(m0, "k", lambda: compute(0)) == v and calls == [0, 0, 1, 1, 1]  # remembered across requests
    fresh = ls2.entries[1].obj
    assert fresh is not m1
    assert ls2.memo(fresh, "k", lambda: compute(1)) not in (w, w2, w3)
    # a message that is not one of the lease's: computed every time
    stranger = am.Message.model_validate(msgs[0])
    n = len(calls)
    ls2.memo(stranger, "k", lambda: compute(7))
    ls2.memo(stranger, "k", lambda: compute(7))
    assert len(calls) == n + 2


def test_memos_equals_memo_of_each():
    pool = TypedPool()
    msgs = conversation(3)
    raws = raws_of(msgs)
    calls: list[int] = []

    def compute(m):
        calls.append(id(m))
        return (m.role, len(calls))

    ls = lease(pool, msgs, raws)
    ms = objs(ls)
    first = ls.memos(ms, "facts", compute)  # fast path: the lease's messages, in order, nothing written
    assert len(calls) == len(ms)
    assert ls.memos(ms, "facts", compute) == first and len(calls) == len(ms)
    assert [ls.memo(m, "facts", lambda m=m: compute(m)) for m in ms] == first and len(calls) == len(ms)
    ms[3].content[0].text = "changed"  # not quiet any more: the slow path
    again = ls.memos(ms, "facts", compute)
    assert len(calls) == len(ms) + 1 and again[:3] == first[:3] and again[4:] == first[4:] and again[3] != first[3]
    again2 = ls.memos(ms, "facts", compute)
    assert len(calls) == len(ms) + 2 and again2[3] != again[3]
    # a subset in another order
    sub = [ms[5], ms[0]]
    assert ls.memos(sub, "facts", compute) == [first[5], first[0]] and len(calls) == len(ms) + 2


def test_memo_of_a_derived_message():
    pool = TypedPool()
    msgs = conversation(2)
    raws = raws_of(msgs)
    ls = lease(pool, msgs, raws)
    d = ls.derive(ls.entries[2].obj, b"k", stub_build(ls.entries[2].obj, "S"))
    calls = []
    v = ls.memo(d, "k", lambda: calls.append(1) or "x")
    assert ls.memo(d, "k", lambda: calls.append(1) or "y") == v == "x" and len(calls) == 1
    d.content[0].content = "edited"
    assert ls.memo(d, "k", lambda: calls.append(1) or "z") == "z" and len(calls) == 2


# ---------------------------------------------------------------------------------------------------
# TrackedList and the touch count


MUTATIONS = {
    "append": lambda t: t.append(9),
    "extend": lambda t: t.extend([9]),
    "insert": lambda t: t.insert(0, 9),
    "remove": lambda t: t.remove(1),
    "pop": lambda t: t.pop(),
    "pop_index": lambda t: t.pop(0),
    "clear": lambda t: t.clear(),
    "sort": lambda t: t.sort(reverse=True),
    "reverse": lambda t: t.reverse(),
    "setitem": lambda t: t.__setitem__(0, 9),
    "setslice": lambda t: t.__setitem__(slice(0, 1), [7, 8]),
    "delitem": lambda t: t.__delitem__(0),
    "delslice": lambda t: t.__delitem__(slice(0, 2)),
    "iadd": lambda t: t.__iadd__([9]),
    "imul": lambda t: t.__imul__(2),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_every_in_place_change_of_a_tracked_list_is_seen(name):
    t = TrackedList([1, 2, 3])
    assert not touched_list(t)
    before = touches[0]
    MUTATIONS[name](t)
    assert touched_list(t), f"TrackedList.{name} did not mark the list"
    assert touches[0] > before, f"TrackedList.{name} did not move the touch count"


def test_augmented_assignment_statements_mark_the_list():
    t = TrackedList([1])
    t += [2]
    assert type(t) is TrackedList and touched_list(t) and t == [1, 2]
    u = TrackedList([1])
    u *= 3
    assert type(u) is TrackedList and touched_list(u) and u == [1, 1, 1]


def test_reading_a_tracked_list_does_not_mark_it():
    t = TrackedList([3, 1, 2])
    before = touches[0]
    _ = (t[0], t[1:], len(t), list(t), sorted(t), 2 in t, t.index(1), t.count(3), t == [3, 1, 2], t + [4], t * 2)
    for _x in t:
        pass
    assert not touched_list(t) and touches[0] == before


def test_typed_lists_are_tracked_and_dump_as_the_plain_dict():
    m = {"role": "assistant", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}},
                                          {"type": "tool_use", "id": "t1", "name": "Read", "input": {"a": [1, 2]}},
                                          {"type": "mystery", "x": 1}]}
    msg = am.Message.model_validate(m)
    assert type(msg.content) is TrackedList and not touched_list(msg.content)
    assert msg.model_dump(mode="json", exclude_unset=True, by_alias=True) == m
    assert msg.wire() == m and orjson.dumps(msg.wire()) == orjson.dumps(m)
    assert isinstance(msg.content[2], am.UnknownBlock)
    assert am.Message.model_validate({"role": "user", "content": "s"}).content == "s"
    built = am.Message(role="user", content=[am.TextBlock(type="text", text="x")])
    assert type(built.content) is TrackedList
    chat = oc.ChatMessage.model_validate({"role": "assistant", "content": None,
                                          "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
    assert type(chat.tool_calls) is TrackedList
    assert chat.wire() == {"role": "assistant", "content": None,
                           "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    # a tracked list that was changed still dumps as what it holds
    msg.content.pop()
    assert msg.wire() == {"role": "assistant", "content": m["content"][:2]}
    assert "__cw_touched__" not in orjson.dumps(msg.wire()).decode()
    msg.role = "assistant"
    assert "__cw_touched__" not in msg.model_dump_json() and "__cw_touched__" not in msg.wire()


def test_the_touch_count_moves_for_message_writes_not_for_request_writes():
    req = am.MessagesRequest.model_validate({"model": "m", "messages": conversation(1)})
    before = touches[0]
    req.messages = list(req.messages)
    req.model = "other"
    req.max_tokens = 5
    assert touches[0] == before, "writes to the request's own fields must not count"
    assert touched(req)
    msg = req.messages[0]
    assert not touched(msg)
    msg.role = "user"
    assert touches[0] == before + 1 and touched(msg)
    blk = req.messages[1].content[0]
    blk.text = "x"
    assert touches[0] == before + 2 and touched(blk) and not touched(req.messages[1])
    del blk.text
    assert touches[0] == before + 3
    chat = oc.ChatRequest.model_validate({"model": "g", "messages": [{"role": "user", "content": "x"}]})
    before = touches[0]
    chat.messages = []
    assert touches[0] == before
    chat_msg = oc.ChatMessage(role="user", content="x")
    chat_msg.content = "y"
    assert touches[0] == before + 1


def test_quiet_follows_the_touch_count():
    pool = TypedPool()
    msgs = conversation(2)
    ls = lease(pool, msgs, raws_of(msgs))
    req = am.MessagesRequest.model_validate({"model": "m", "messages": []})
    req.messages = objs(ls)  # a request-level write
    assert ls.quiet()
    unrelated = am.TextBlock(type="text", text="a")
    unrelated.text = "b"  # any typed object anywhere
    assert not ls.quiet()
    # not quiet, but the messages themselves are untouched: all still given back, as one run
    assert pool.give_back(ls) == len(msgs)
    ls2 = lease(pool, msgs, raws_of(msgs))  # new bytes objects: the run is keyed by the bytes objects
    assert [o.wire() for o in objs(ls2)] == msgs


def test_pool_stays_within_its_byte_bound():
    msgs = conversation(6)
    raws = raws_of(msgs)
    pool = TypedPool(max_bytes=sum(map(len, raws)) * 3)
    for seed in range(8):
        ms = conversation(6, seed)
        ls = lease(pool, ms, raws_of(ms))
        ls.entries[0].obj.role = "user"  # loose entries, not a run
        pool.give_back(ls)
        assert pool._bytes <= pool.max_bytes
        assert pool._bytes == sum(len(k[1]) if k[0] != "run" else v.nbytes for k, v in pool._d.items())


def test_entry_snapshot_of_a_plain_list():
    """A derived message built with a plain list (not a TrackedList): changes are seen by comparison."""
    m = am.Message.model_validate({"role": "user", "content": [{"type": "text", "text": "a"}]})
    d = m.model_copy(update={"content": [b.model_copy() for b in m.content]})
    assert type(d.content) is list
    e = Entry(d)
    assert e.pristine()
    d.content.append(am.TextBlock(type="text", text="b"))
    assert not e.pristine()
