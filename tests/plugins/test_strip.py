"""The strip stage: OpenClaw envelopes out of the text used for tagging/memory, and optionally the wire."""

from __future__ import annotations

import json

import orjson
import pytest

from contextwarden.core.runtime import Runtime
from contextwarden.models import ApiKind
from contextwarden.plugins import strip as strip_stage
from contextwarden.plugins.strip import Stripper
from contextwarden.request import lifecycle
from contextwarden.settings import load_settings

ALL = ["vc_prompt", "vc_user", "system_timestamp", "channel_header", "message_id"]
OTHER_STAGES = ["budget", "tagging", "clearing", "compaction", "memory"]

ENVELOPED = ("[vc:prompt]\n"
             "System: [2026-01-02 09:58:12 UTC] Alice joined the group\n"
             "System: [2026-01-02 09:59:00 UTC] Bob renamed the chat\n\n"
             "[Telegram Alice (@alice) id:123 +5m 2026-01-02 10:00 UTC] can you check the deploy logs?\n"
             "[message_id: 4711]")


@pytest.fixture
def s():
    return Stripper(ALL, [])


@pytest.mark.parametrize("text,clean,pattern", [
    ("[vc:prompt]\nhello there", "hello there", "vc_prompt"),
    ("[vc:user]  what is 2+2?  [/vc:user]", "what is 2+2?", "vc_user"),
    ("System: [2026-01-02 10:00:00 UTC] Node restarted\nwhy did it restart?", "why did it restart?", "system_timestamp"),
    ("[Telegram Alice (@alice) id:123 +5m 2026-01-02 10:00 UTC] hi bot", "hi bot", "channel_header"),
    ("[WhatsApp Bast Group id:-5156869263 2026-01-02 10:00] morning", "morning", "channel_header"),
    ("[iMessage +1555 Mon 2026-02-23 16:05:10] are you there", "are you there", "channel_header"),
    ("please summarise\n[message_id: 987654]", "please summarise", "message_id"),
])
def test_each_builtin_pattern(s, text, clean, pattern):
    out, counts = s.clean(text)
    assert out == clean
    assert counts == {pattern: 1}


def test_the_full_envelope(s):
    out, counts = s.clean(ENVELOPED)
    assert out == "can you check the deploy logs?"
    assert counts == {"vc_prompt": 1, "system_timestamp": 1, "channel_header": 1, "message_id": 1}


def test_plain_text_is_left_alone(s):
    for text in ["System: all good", "[see docs] for details", "use [message_id] in the query", "id:123 is a user",
                 "[Note from Bob] no id here", "a\n[message_id: 12] in the middle\nof text"]:
        out, counts = s.clean(text)
        assert (out, counts) == (text, {}), text


def test_only_enabled_patterns_and_user_patterns():
    s = Stripper(["message_id"], [r"(?m)^\[ctx:[^\]]*\]\s*", r"\bSECRET-\d+\b"])
    out, counts = s.clean("[ctx: deploy=prod]\n[vc:prompt]\nticket SECRET-42 fails\n[message_id: 1]")
    assert out == "[vc:prompt]\nticket  fails"
    assert counts == {"message_id": 1, "user_0": 1, "user_1": 1}


def test_bad_user_pattern_is_reported_and_skipped():
    s = Stripper(["nope"] + ALL, ["(unclosed"])
    assert any("unknown strip pattern 'nope'" in e for e in s.errors)
    assert any("user_patterns[0]" in e for e in s.errors)
    assert s.clean("[vc:prompt]\nok")[0] == "ok"


def test_a_memoised_clean_is_the_same_as_a_fresh_strippers():
    long_plain = "x" * 5000
    texts = [ENVELOPED, "plain words", "[vc:prompt]\nhi", "", long_plain,
             "[vc:prompt]\n" + "y" * 4000 + "\n[message_id: 9]",
             # same length and both ends as the one before, a different middle: must not be served its entry
             "[vc:prompt]\n" + "y" * 1000 + "[vc:user]z[/vc:user]" + "y" * 2980 + "\n[message_id: 9]",
             "a\n[message_id: 12] in the middle\nof text"]
    cached = Stripper(ALL, [r"SECRET-\d+"])
    for _ in range(3):
        for t in texts:
            fresh = Stripper(ALL, [r"SECRET-\d+"])
            copy = "".join(list(t))  # an equal text that is another object (as a new request parses it)
            want = fresh._clean(t) if t else (t, {})
            assert cached.clean(copy) == want == fresh.clean(t), t[:40]
    out, counts = cached.clean(ENVELOPED)
    counts["vc_prompt"] = 99  # a caller changing the counts it got does not change the memo
    assert cached.clean(ENVELOPED)[1]["vc_prompt"] == 1


def test_different_patterns_never_share_a_memo_entry():
    from contextwarden.plugins.strip import stripper_for
    from contextwarden.settings import StripSection

    text = "[vc:prompt]\nticket SECRET-42 fails\n[message_id: 1]"
    a = Stripper(["message_id"], [])
    b = Stripper(ALL, [r"\bSECRET-\d+\b"])
    assert a.clean(text) == ("[vc:prompt]\nticket SECRET-42 fails", {"message_id": 1})
    assert b.clean(text) == ("ticket  fails", {"vc_prompt": 1, "message_id": 1, "user_0": 1})
    assert a.clean(text)[0] != b.clean(text)[0]
    memo: dict = {}  # (a runtime's: runtime.memo("strip.strippers", dict))
    sa = stripper_for(StripSection(enabled_patterns=["message_id"], user_patterns=[]), memo)
    sb = stripper_for(StripSection(enabled_patterns=["message_id"], user_patterns=[r"SECRET-\d+"]), memo)
    assert sa is not sb
    assert stripper_for(StripSection(enabled_patterns=["message_id"], user_patterns=[]), memo) is sa
    assert sa.clean(text)[0] == "[vc:prompt]\nticket SECRET-42 fails"
    assert sb.clean(text)[0] == "[vc:prompt]\nticket  fails"


def test_memo_is_bounded(monkeypatch):
    from contextwarden.plugins import strip as mod

    monkeypatch.setattr(mod, "MEMO_ENTRIES", 5)
    monkeypatch.setattr(mod, "MEMO_CHARS", 10_000)
    s = Stripper(ALL, [])
    for i in range(50):
        assert s.clean(f"[vc:prompt]\nmessage {i}")[0] == f"message {i}"
        s.clean(f"{i}" * 600)
    assert len(s._memo) <= 5 and s._memo.held <= 10_000


def test_anthropic_message_text():
    from contextwarden.models import anthropic as am

    req = am.MessagesRequest.model_validate({"model": "claude-x", "messages": [
        {"role": "user", "content": "plain [message_id: 1]"},
        {"role": "user", "content": []},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"}, {"type": "redacted_thinking", "data": "d"},
            {"type": "text", "text": ""}, {"type": "text", "text": "ok"},
            {"type": "tool_use", "id": "t1", "name": "Read", "input": {"file_path": "a.py", "n": [1, "é"]}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "body"},
            {"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "text", "text": "x"},
                                                                    {"type": "image", "source": {}}]},
            {"type": "tool_result", "tool_use_id": "t3"},
            {"type": "image", "source": {"type": "base64", "data": "AA=="}},
            {"type": "mystery", "text": "kept?"}, {"type": "text", "text": "[vc:prompt]\nbye"}]},
    ]})
    assert [am.message_text(m) for m in req.messages] == [
        "plain [message_id: 1]", "", 'hmm\nok\nRead {"file_path":"a.py","n":[1,"é"]}', "body\nx\n[vc:prompt]\nbye"]


# ---------------------------------------------------------------------------- through the pipeline


def runtime(home, **strip):
    settings = load_settings(None, home, overrides={"pipeline": {"disabled": OTHER_STAGES}, "strip": strip,
                                                    "memory": {"enabled": False}})
    return Runtime(settings, home, log=False)


def run(rt, api, body, path="/v1/messages"):
    raw = orjson.dumps(body)
    ctx, outcome = lifecycle.send(rt, api, "api.example.com", path, [("content-type", "application/json")], raw, "f1",
                                  count=False)
    return ctx, outcome


def anthropic_body(n_turns=2):
    msgs = []
    for i in range(n_turns):
        msgs.append({"role": "user", "content": ENVELOPED.replace("deploy logs", f"deploy logs #{i}")})
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": f"Looking at logs #{i}."}]})
    msgs.append({"role": "user", "content": [{"type": "text", "text": "[vc:prompt]\n[Telegram Alice (@alice) id:123 +1m 2026-01-02 10:09 UTC] thanks!\n[message_id: 99]",
                                              "cache_control": {"type": "ephemeral"}}]})
    return {"model": "claude-sonnet-4-5", "max_tokens": 200, "system": "You are a bot.", "messages": msgs}


def test_default_cleans_notes_and_leaves_the_wire_alone(cw_home):
    rt = runtime(cw_home)
    try:
        body = anthropic_body()
        ctx, outcome = run(rt, ApiKind.ANTHROPIC, body)
        assert outcome.body is None and outcome.reason == "unchanged"
        # the messages it cleaned (the others read as their own text)
        assert ctx.notes["clean_text"] == {0: "can you check the deploy logs #0?", 2: "can you check the deploy logs #1?",
                                           4: "thanks!"}
        ev = [e.data for e in rt.bus.recent if e.type == "strip"]
        assert ev == [{"messages": 5, "cleaned": 3, "patterns": {"vc_prompt": 3, "system_timestamp": 2, "channel_header": 3, "message_id": 3},
                       "rewritten": 0, "rewrite_outgoing": False, "api": "anthropic"}]
    finally:
        rt.close()


def test_the_cleaned_text_read_ahead_is_the_stages_and_none_when_the_stage_is_not_in_the_pipeline(tmp_path):
    """Memory's search reads the cleaned text before the stage runs (``clean_text_ahead``): the same text
    while ``strip`` runs, nothing once the profile leaves it out (``Runtime.runs``)."""
    for disabled, runs in (([], True), (["strip"], False)):
        home = tmp_path / str(runs)
        settings = load_settings(None, home, overrides={"pipeline": {"disabled": OTHER_STAGES + disabled},
                                                        "memory": {"enabled": False}})
        rt = Runtime(settings, home, log=False)
        try:
            assert rt.runs("strip") is runs and not rt.runs("clearing")
            ctx, _ = run(rt, ApiKind.ANTHROPIC, anthropic_body())
            ahead = strip_stage.clean_text_ahead(ctx)
            if runs:
                assert {i: ahead.get(i) for i in (0, 2, 4)} == ctx.notes["clean_text"]
            else:
                assert ahead == {} and "clean_text" not in ctx.notes
        finally:
            rt.close()


def test_rewrite_outgoing_is_valid_and_deterministic(cw_home):
    rt = runtime(cw_home, rewrite_outgoing=True)
    try:
        body = anthropic_body(2)
        ctx, outcome = run(rt, ApiKind.ANTHROPIC, body)
        assert outcome.reason == "rewritten", outcome.reason
        sent = orjson.loads(outcome.body)
        assert sent["messages"][0]["content"] == "can you check the deploy logs #0?"
        assert sent["messages"][4]["content"][0] == {"type": "text", "text": "thanks!", "cache_control": {"type": "ephemeral"}}
        assert sent["system"] == body["system"] and sent["messages"][1] == body["messages"][1]
        assert ctx.original == body  # the original is never mutated
        # the next turn: the same old messages come out byte-identical, so the cached prefix holds
        nxt = anthropic_body(3)
        _, outcome2 = run(rt, ApiKind.ANTHROPIC, nxt)
        sent2 = orjson.loads(outcome2.body)
        assert [orjson.dumps(m) for m in sent2["messages"][:4]] == [orjson.dumps(m) for m in sent["messages"][:4]]
        assert not [e for e in rt.bus.recent if e.type == "error"]
    finally:
        rt.close()


def test_envelope_only_message_is_not_emptied(cw_home):
    rt = runtime(cw_home, rewrite_outgoing=True)
    try:
        body = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "[vc:prompt]\n[message_id: 5]"}]}
        ctx, outcome = run(rt, ApiKind.ANTHROPIC, body)
        assert outcome.body is None  # nothing to send but the envelope: left as it was
        assert ctx.notes["clean_text"] == {0: ""}
    finally:
        rt.close()


def test_openai_chat_and_responses(cw_home):
    rt = runtime(cw_home, rewrite_outgoing=True)
    try:
        chat = {"model": "gpt-4o", "messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": [{"type": "text", "text": ENVELOPED}, {"type": "image_url", "image_url": {"url": "data:x"}}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "[message_id: 3] stays: not a user message"},
            {"role": "user", "content": "[vc:user]ok then[/vc:user]"}]}
        ctx, outcome = run(rt, ApiKind.OPENAI_CHAT, chat, "/v1/chat/completions")
        sent = orjson.loads(outcome.body)
        assert sent["messages"][1]["content"][0]["text"] == "can you check the deploy logs?"
        assert sent["messages"][1]["content"][1] == chat["messages"][1]["content"][1]
        assert sent["messages"][3] == chat["messages"][3] and sent["messages"][4]["content"] == "ok then"
        assert "content" not in sent["messages"][2] or sent["messages"][2]["content"] is None
        assert ctx.original["messages"][1]["content"][0]["text"] == ENVELOPED

        resp = {"model": "gpt-5", "input": [{"role": "user", "content": [{"type": "input_text", "text": ENVELOPED}]},
                                             {"type": "function_call", "call_id": "x", "name": "f", "arguments": "{}"},
                                             {"type": "function_call_output", "call_id": "x", "output": "done"}]}
        ctx, outcome = run(rt, ApiKind.OPENAI_RESPONSES, resp, "/v1/responses")
        sent = orjson.loads(outcome.body)
        assert sent["input"][0]["content"][0]["text"] == "can you check the deploy logs?"
        assert sent["input"][1:] == resp["input"][1:]
        assert ctx.notes["clean_text"][0] == "can you check the deploy logs?"

        ctx, outcome = run(rt, ApiKind.OPENAI_RESPONSES, {"model": "gpt-5", "input": "[vc:prompt]\nhi"}, "/v1/responses")
        assert orjson.loads(outcome.body)["input"] == "hi"
    finally:
        rt.close()


def test_real_claude_code_body_passes_through_untouched(cw_home):
    from tests.conftest import EVAL_DIR

    rt = runtime(cw_home, rewrite_outgoing=True)
    try:
        body = json.loads((EVAL_DIR / "requests" / "claude-code-2.1.197-turn2.json").read_text())
        ctx, outcome = run(rt, ApiKind.ANTHROPIC, body)
        assert outcome.body is None and outcome.reason == "unchanged"
        assert ctx.notes["clean_text"] == {}
        assert [e.data["cleaned"] for e in rt.bus.recent if e.type == "strip"] == [0]
    finally:
        rt.close()
