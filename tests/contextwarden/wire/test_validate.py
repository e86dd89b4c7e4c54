"""The validator: what a rewrite may not do, judged against the client's original body."""

from __future__ import annotations

import copy
import json

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from contextwarden.models import ApiKind
from contextwarden.wire.dialects import validate_rewrite
from tests.conftest import EVAL_DIR

CC_TURN2 = EVAL_DIR / "requests" / "claude-code-2.1.197-turn2.json"
A = ApiKind.ANTHROPIC


def cc():
    return json.loads(CC_TURN2.read_text())


def v(new, original, api=A):
    return validate_rewrite(api, new, original)


def tool_loop(n=3, thinking=False):
    """A Claude-Code-like body: user prompt, then n tool_use/tool_result rounds, ending on a tool result."""
    msgs = [{"role": "user", "content": [{"type": "text", "text": "fix the tests"}]}]
    for i in range(n):
        content = []
        if thinking:
            content.append({"type": "thinking", "thinking": f"step {i}", "signature": f"sig{i}=="})
        content.append({"type": "tool_use", "id": f"toolu_{i}", "name": "Bash", "input": {"command": f"ls {i}"}})
        msgs.append({"role": "assistant", "content": content})
        msgs.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": f"out {i}"}]})
    return {"model": "claude-sonnet-4-5", "max_tokens": 100, "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
            "tools": [{"name": "Bash", "input_schema": {"type": "object"}}], "messages": msgs}


# ---------------------------------------------------------------------------- Anthropic


def test_unchanged_real_body_is_valid():
    assert v(cc(), cc()) == []
    assert v(tool_loop(thinking=True), tool_loop(thinking=True)) == []


def test_dropping_a_whole_tool_round_is_valid():
    orig = tool_loop(4)
    new = copy.deepcopy(orig)
    del new["messages"][1:3]  # the first tool_use and its result together
    assert v(new, orig) == []


def test_dropping_only_a_tool_result_is_caught():
    orig = tool_loop(3)
    new = copy.deepcopy(orig)
    new["messages"][2]["content"] = [{"type": "text", "text": "(cleared)"}]
    problems = v(new, orig)
    assert any("toolu_0" in p and "not answered" in p for p in problems)


def test_orphan_result_and_duplicate_ids_are_caught():
    orig = tool_loop(3)
    new = copy.deepcopy(orig)
    del new["messages"][1]  # tool_use gone, result stays: two user messages in a row and an orphan
    problems = v(new, orig)
    assert any("toolu_0" in p and "does not answer" in p for p in problems)
    assert any("consecutive `user`" in p for p in problems)
    dup = copy.deepcopy(orig)
    dup["messages"][3]["content"][0]["id"] = "toolu_0"
    dup["messages"][4]["content"][0]["tool_use_id"] = "toolu_0"
    assert any("appears twice" in p for p in v(dup, orig))


def test_result_must_be_in_the_immediately_following_message():
    orig = tool_loop(2)
    new = copy.deepcopy(orig)
    # the first result moves one round later: the id is still in the body, but not right after its use
    r0 = new["messages"][2]["content"]
    new["messages"][2]["content"] = [{"type": "text", "text": "wait"}]
    new["messages"][4]["content"] = r0 + new["messages"][4]["content"]
    problems = v(new, orig)
    assert any("toolu_0" in p and "not answered" in p for p in problems)
    assert any("toolu_0" in p and "does not answer" in p for p in problems)


def test_system_and_tools_must_be_byte_equal():
    orig = cc()
    new = copy.deepcopy(orig)
    new["system"][2]["text"] += " "
    assert any("`system`" in p for p in v(new, orig))
    new = copy.deepcopy(orig)
    new["tools"] = new["tools"][:-1]
    assert any("`tools`" in p for p in v(new, orig))
    new = copy.deepcopy(orig)
    new["tools"][0] = dict(reversed(list(new["tools"][0].items())))  # same JSON value, different bytes
    assert any("`tools`" in p for p in v(new, orig))
    new = copy.deepcopy(orig)
    del new["system"]
    assert any("`system` was removed" in p for p in v(new, orig))


def test_latest_thinking_must_be_kept_verbatim():
    orig = tool_loop(3, thinking=True)
    new = copy.deepcopy(orig)
    new["messages"][5]["content"][0]["signature"] = "forged"
    assert any("thinking" in p for p in v(new, orig))
    new = copy.deepcopy(orig)
    del new["messages"][5]["content"][0]
    assert any("thinking" in p for p in v(new, orig))
    # older assistant turns' thinking may go (the API ignores it)
    new = copy.deepcopy(orig)
    del new["messages"][1]["content"][0]
    del new["messages"][3]["content"][0]
    assert v(new, orig) == []


def test_redacted_thinking_counts_as_thinking():
    orig = tool_loop(1)
    orig["messages"][1]["content"].insert(0, {"type": "redacted_thinking", "data": "EuYB..."})
    new = copy.deepcopy(orig)
    new["messages"][1]["content"][0]["data"] = "other"
    assert any("thinking" in p for p in v(new, orig))


def test_empty_content_and_blank_text_blocks():
    orig = tool_loop(2)
    new = copy.deepcopy(orig)
    new["messages"][0]["content"] = [{"type": "text", "text": "   "}]
    assert any("empty text block" in p for p in v(new, orig))
    new = copy.deepcopy(orig)
    new["messages"][0]["content"] = []
    assert any("empty content" in p for p in v(new, orig))
    new = copy.deepcopy(orig)
    new["messages"][0]["content"] = ""
    assert any("empty content" in p for p in v(new, orig))


def test_defects_the_client_already_had_are_not_blamed_on_the_rewrite():
    orig = tool_loop(3)
    orig["messages"][0]["content"].append({"type": "text", "text": ""})  # the client's own empty block
    new = copy.deepcopy(orig)
    del new["messages"][1:3]
    assert v(new, orig) == []


def test_breakpoints_at_most_four():
    orig = tool_loop(4)
    new = copy.deepcopy(orig)
    for i in (2, 4, 6, 8):
        new["messages"][i]["content"][0]["cache_control"] = {"type": "ephemeral"}
    assert any("5 cache_control breakpoints" in p for p in v(new, orig))
    new["messages"][2]["content"][0].pop("cache_control")
    assert v(new, orig) == []
    # breakpoints nested in a tool_result's content count too
    new["messages"][2]["content"][0]["content"] = [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]
    assert any("5 cache_control" in p for p in v(new, orig))


def test_role_rules():
    orig = tool_loop(2)
    new = copy.deepcopy(orig)
    new["messages"].insert(0, {"role": "assistant", "content": "I start"})
    assert any("first user/assistant message is `assistant`" in p for p in v(new, orig))
    new = copy.deepcopy(orig)
    new["messages"] = new["messages"][:-1]
    assert any("last message's role" in p for p in v(new, orig))
    # consecutive user messages are allowed when the client itself sent them
    orig2 = copy.deepcopy(orig)
    orig2["messages"].insert(1, {"role": "user", "content": "and quickly"})
    new2 = copy.deepcopy(orig2)
    new2["messages"][1]["content"] = "and quickly please"
    assert v(new2, orig2) == []


def test_system_role_messages_only_where_the_original_had_them():
    orig = cc()  # has a role `system` message in the middle of `messages`
    sysmsg = orig["messages"][1]
    assert sysmsg["role"] == "system"
    new = copy.deepcopy(orig)
    new["messages"].insert(3, {"role": "system", "content": "injected"})
    assert any("not in the original" in p for p in v(new, orig))
    # removing it (compacted away) is fine; swapping two of them is not
    new = copy.deepcopy(orig)
    del new["messages"][1]
    assert v(new, orig) == []
    orig_two = copy.deepcopy(orig)
    orig_two["messages"].insert(3, {"role": "system", "content": "second"})
    moved = copy.deepcopy(orig_two)
    a, b = moved["messages"][1], moved["messages"][3]
    moved["messages"][1], moved["messages"][3] = b, a
    assert any("order" in p for p in v(moved, orig_two))


def test_unknown_roles_are_kept_not_rejected():
    orig = tool_loop(1)
    orig["messages"].insert(1, {"role": "developer_note", "content": "whatever comes next"})
    new = copy.deepcopy(orig)
    assert v(new, orig) == []
    del new["messages"][1]
    assert v(new, orig) == []


def test_garbage_is_invalid_not_an_exception():
    assert v({"messages": "nope"}, tool_loop(1))
    assert v([], tool_loop(1)) == ["rewritten body is not a JSON object"]
    assert v({"messages": [None, 3]}, tool_loop(1))
    assert validate_rewrite("nope", {}, {})


# ---------------------------------------------------------------------------- OpenAI chat


def chat():
    return {"model": "gpt-4o", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{\"c\":\"Paris\"}"}},
            {"id": "c2", "type": "function", "function": {"name": "w", "arguments": "{\"c\":\"Rome\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
        {"role": "user", "content": "thanks, and Oslo?"}]}


def test_chat_valid_and_pair_rules():
    assert v(chat(), chat(), ApiKind.OPENAI_CHAT) == []
    new = chat()
    del new["messages"][4]
    assert any("c2" in p and "not answered" in p for p in v(new, chat(), ApiKind.OPENAI_CHAT))
    new = chat()
    del new["messages"][2]
    assert any("c1" in p for p in v(new, chat(), ApiKind.OPENAI_CHAT))
    new = chat()
    del new["messages"][2:5]
    assert v(new, chat(), ApiKind.OPENAI_CHAT) == []


def test_chat_null_content_only_for_tool_calling_assistant():
    new = chat()
    new["messages"][1]["content"] = None
    assert any("null content" in p for p in v(new, chat(), ApiKind.OPENAI_CHAT))


def test_ollama_tool_calls_without_ids():
    body = {"model": "llama3.1", "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "w", "arguments": {"c": "Paris"}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "w"},
        {"role": "user", "content": "ok"}]}
    assert v(copy.deepcopy(body), body, ApiKind.OLLAMA_CHAT) == []


# ---------------------------------------------------------------------------- Responses


def test_responses_call_outputs_need_their_calls():
    body = {"model": "gpt-5", "instructions": "be good", "input": [
        {"role": "user", "content": "list files"},
        {"type": "function_call", "call_id": "f1", "name": "sh", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "f1", "output": "a b"},
        {"role": "user", "content": "thanks"}]}
    R = ApiKind.OPENAI_RESPONSES
    assert v(copy.deepcopy(body), body, R) == []
    new = copy.deepcopy(body)
    del new["input"][1]
    assert any("f1" in p for p in v(new, body, R))
    new = copy.deepcopy(body)
    new["instructions"] = "be bad"
    assert any("instructions" in p for p in v(new, body, R))
    new = copy.deepcopy(body)
    del new["input"][1:3]
    assert v(new, body, R) == []


# ---------------------------------------------------------------------------- generated conversations


@st.composite
def conversations(draw):
    """Valid Anthropic conversations: text turns, tool loops with parallel calls, thinking, images,
    role `system` messages, breakpoints."""
    msgs = []
    ids = iter(range(10_000))
    n_turns = draw(st.integers(1, 8))
    for t in range(n_turns):
        user = [{"type": "text", "text": draw(st.text(min_size=1, max_size=20).filter(str.strip))}]
        if draw(st.booleans()):
            user.append({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}})
        msgs.append({"role": "user", "content": user})
        if draw(st.integers(0, 4)) == 0:
            msgs.append({"role": "system", "content": f"note {t}"})
        for _ in range(draw(st.integers(0, 3))):
            uses = [{"type": "tool_use", "id": f"toolu_{next(ids)}", "name": "Read", "input": {}} for _ in range(draw(st.integers(1, 3)))]
            pre = [{"type": "thinking", "thinking": "hm", "signature": f"s{t}"}] if draw(st.booleans()) else []
            msgs.append({"role": "assistant", "content": pre + uses})
            msgs.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": u["id"], "content": "r"} for u in uses]})
        if t < n_turns - 1:
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": "done"}]})
    last = msgs[-1] if msgs[-1]["role"] != "system" else msgs[-2]
    last["content"][-1]["cache_control"] = {"type": "ephemeral"}
    return {"model": "claude-x", "system": [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}], "messages": msgs}


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversations(), st.data())
def test_generated_valid_bodies_pass_and_broken_pairs_fail(body, data):
    assert v(copy.deepcopy(body), body) == []
    results = [(i, j) for i, m in enumerate(body["messages"]) for j, b in enumerate(m["content"] if isinstance(m["content"], list) else [])
               if isinstance(b, dict) and b.get("type") == "tool_result"]
    if results:
        i, j = data.draw(st.sampled_from(results))
        broken = copy.deepcopy(body)
        del broken["messages"][i]["content"][j]
        if not broken["messages"][i]["content"]:
            broken["messages"][i]["content"] = [{"type": "text", "text": "x"}]
        assert any("not answered" in p for p in v(broken, body))
