"""Clearing's stubs are worked out once per result (contextwarden.compress.stubmemo): the memo gives what the
computation gives, and a candidate seen again costs a lookup, not a redaction and a count."""

from __future__ import annotations

import copy
from types import SimpleNamespace

from contextwarden.compress.stubmemo import MEMO, result_stub
from contextwarden.memory.ids import memory_id
from contextwarden.models.base import ApiKind
from contextwarden.plugins.clearing import stub_text
from tests.support.stages import Harness, anthropic_tool_loop, settings_overrides

MODEL = "claude-sonnet-4-5"
TEXT = "def main():\n    token = 'sk-ant-api03-" + "x" * 40 + "'\n" + "    print('hello')\n" * 200


def _counting():
    calls = []

    def make(*a):
        calls.append(a)
        return stub_text(*a)
    return make, calls


def test_the_memo_gives_the_computed_stub_once(cw_home):
    h = Harness(cw_home / "m", profile="claude-code")
    try:
        ctx = SimpleNamespace(runtime=h.rt, model=MODEL)
        make, calls = _counting()
        args = ("Read", {"file_path": "src/app.py"}, TEXT, 1234, 0, "")
        got = result_stub(ctx, *args, make)
        want = stub_text(*args)
        assert got == (want, h.rt.tokens.count_text(want, MODEL), memory_id(TEXT))
        assert "sk-ant-api03-" + "x" * 40 not in got[0]  # still redacted
        # the same result again (a new string object, as a new request parses it): no new computation
        assert result_stub(ctx, *args[:2], "".join(list(TEXT)), *args[3:], make) == got
        assert len(calls) == 1
        # anything the stub is made of differs: computed again, and different
        for other in [("Read", {"file_path": "src/other.py"}, TEXT, 1234, 0, ""), ("Read", {"file_path": "src/app.py"}, TEXT + "x", 1234, 0, ""),
                      ("Read", {"file_path": "src/app.py"}, TEXT, 999, 0, ""), ("Bash", {"file_path": "src/app.py"}, TEXT, 1234, 0, "")]:
            assert result_stub(ctx, *other, make)[0] == stub_text(*other) != got[0]
        assert len(calls) == 5
        assert result_stub(ctx, "Read", {}, "   ", 10, 2, "", make) == (stub_text("Read", {}, "   ", 10, 2, ""),
                                                                        h.rt.tokens.count_text(stub_text("Read", {}, "   ", 10, 2, ""), MODEL), None)
    finally:
        h.close()


def _direct(ctx, tool, tool_input, text, tokens, images, how, make):
    """What clearing computed on every request before the memo."""
    stub = make(tool, tool_input, text, tokens, images, how)
    return stub, ctx.runtime.tokens.count_text(stub, ctx.model), memory_id(text) if text.strip() else None


def test_clearing_through_the_memo_sends_the_same_bodies(cw_home, monkeypatch):
    """A session sent through clearing with the memo and without it: the same bodies, byte for byte."""
    import contextwarden.plugins.clearing as clearing
    ov = settings_overrides(window=9_000, stages=["strip", "clearing"],
                            clearing={"trigger_tokens": 3000, "clear_at_least": 500, "keep_recent": 2})
    full = anthropic_tool_loop(7, result_words=250, session="memo-1")
    msgs, top = full["messages"][:-1], {k: v for k, v in full.items() if k != "messages"}
    bodies = [{**top, "messages": msgs[:n]} for n in range(3, len(msgs) + 1, 2)]
    outs = []
    for name in ("memo", "direct"):
        if name == "direct":
            monkeypatch.setattr(clearing, "result_stub", _direct)
        h = Harness(cw_home / name, profile="claude-code", overrides=ov)
        try:
            sent = [h.send(ApiKind.ANTHROPIC, copy.deepcopy(b)) for b in bodies]
            assert any(s.events("clearing") for s in sent)
            assert (MEMO in h.rt._memos) == (name == "memo")
            outs.append([s.outcome.body for s in sent])
        finally:
            h.close()
    assert outs[0] == outs[1]


def test_a_carried_result_is_stubbed_once_however_many_sessions_share_the_memo(cw_home, monkeypatch):
    """A conversation's carried slot keeps its stub: looked at again on the next request, it is not
    stubbed again even when the runtime's shared memo no longer holds it (50 sessions' candidates were
    more than it holds, and each request evicted what the next one needed)."""
    import contextwarden.plugins.clearing as clearing
    ov = settings_overrides(window=9_000, stages=["strip", "clearing"],
                            clearing={"trigger_tokens": 3000, "clear_at_least": 100_000, "keep_recent": 2})
    full = anthropic_tool_loop(9, result_words=250, session="memo-carried")
    msgs, top = full["messages"][:-1], {k: v for k, v in full.items() if k != "messages"}
    bodies = [{**top, "messages": msgs[:n]} for n in range(7, len(msgs) + 1, 2)]
    made: list[str] = []

    def forgetful(ctx, tool, tool_input, text, *rest):
        made.append(text)
        ctx.runtime._memos.pop(MEMO, None)  # the shared memo holds nothing from one call to the next
        return result_stub(ctx, tool, tool_input, text, *rest)

    monkeypatch.setattr(clearing, "result_stub", forgetful)
    # every request looks at its candidates' stubs and makes no step (the gain never reaches the huge
    # clear_at_least): the same results are looked at request after request
    monkeypatch.setattr(clearing, "_may_step", lambda *a: True)
    h = Harness(cw_home / "carried", profile="claude-code", overrides=ov)
    try:
        for b in bodies:
            h.send(ApiKind.ANTHROPIC, copy.deepcopy(b))
    finally:
        h.close()
    assert len(bodies) >= 3 and len(made) >= 3  # results were stubbed, on several requests
    assert len(made) == len(set(made))  # each once
