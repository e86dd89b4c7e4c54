"""What Codex's Responses requests need kept whole: the ChatGPT-plan endpoint and its headers,
encrypted reasoning byte for byte and never split from its call, Codex's own compaction items, and
``previous_response_id`` requests (the server holds the history: nothing of it is ours)."""

from __future__ import annotations

import copy

import pytest

from contextwarden.models.base import ApiKind
from contextwarden.settings.proxy import ProxySection
from contextwarden.util.redact import redact_headers, tenant_id, tenant_of
from contextwarden.wire.apis import classify, classify_websocket
from contextwarden.wire.dialects import validate_rewrite
from tests.support.stages import Harness, responses_tool_loop, settings_overrides, words

R = ApiKind.OPENAI_RESPONSES


# -- recognising Codex's endpoints ---------------------------------------------------------------

def test_codex_endpoints_are_recognised():
    p = ProxySection()
    assert classify("POST", "chatgpt.com", 443, "/backend-api/codex/responses", p) is R
    assert classify("POST", "api.openai.com", 443, "/v1/responses", p) is R
    # Codex's own compaction requests and everything else on chatgpt.com pass untouched
    assert classify("POST", "chatgpt.com", 443, "/backend-api/codex/responses/compact", p) is None
    assert classify("POST", "api.openai.com", 443, "/v1/responses/compact", p) is None
    assert classify("POST", "chatgpt.com", 443, "/backend-api/conversation", p) is None
    assert classify("GET", "chatgpt.com", 443, "/backend-api/codex/models", p) is None
    assert classify_websocket("chatgpt.com", 443, "/backend-api/codex/responses", p) is R
    assert classify_websocket("api.openai.com", 443, "/v1/responses", p) is R
    assert classify_websocket("api.openai.com", 443, "/v1/realtime", p) is None
    assert classify_websocket("api.anthropic.com", 443, "/v1/messages", p) is None


def test_codex_headers_are_never_shown():
    headers = [("authorization", "Bearer eyJhbGciOi.chatgpt-oauth"), ("chatgpt-account-id", "acct-42"),
               ("x-codex-turn-metadata", '{"installation_id":"abc"}'), ("x-codex-window-id", "w:0"),
               ("originator", "codex_exec"), ("session-id", "0192")]
    shown = dict(redact_headers(headers))
    assert shown["authorization"] == shown["chatgpt-account-id"] == "[REDACTED:header]"
    assert shown["x-codex-turn-metadata"] == shown["x-codex-window-id"] == "[REDACTED:header]"
    assert shown["originator"] == "codex_exec" and shown["session-id"] == "0192"

    # the tenant of a ChatGPT plan is its account, not its short-lived OAuth token
    plan = [("Chatgpt-Account-Id", "acct-42"), ("authorization", "Bearer tok-1")]
    assert tenant_of(plan, "/v1/responses", "s", "salt") == tenant_id("acct-42", "salt")
    assert tenant_of([("authorization", "Bearer sk-proj-1")], "/v1/responses", "s", "salt") == tenant_id("sk-proj-1", "salt")


# -- the validator's Responses rules -------------------------------------------------------------

def codex_input() -> list[dict]:
    return [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "rules"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "run it"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA-one"},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "exec_command", "arguments": '{"cmd":"ls"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "a.txt\n" * 50},
        {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "gAAAA-two"},
        {"type": "function_call", "id": "fc_2", "call_id": "call_2", "name": "exec_command", "arguments": '{"cmd":"cat a.txt"}'},
        {"type": "function_call_output", "call_id": "call_2", "output": "hello"},
    ]


def check(new_items: list, orig_items: list | None = None) -> list[str]:
    orig = {"model": "gpt-5-codex", "input": orig_items if orig_items is not None else codex_input(), "tools": []}
    return validate_rewrite(R, {**orig, "input": new_items}, orig)


def test_clearing_an_output_or_a_calls_arguments_is_valid():
    items = codex_input()
    items[4] = {**items[4], "output": "[cleared]"}
    items[3] = {**items[3], "arguments": '{"cmd":"[cleared]"}'}
    assert check(items) == []


def test_dropping_a_whole_group_is_valid():
    items = codex_input()
    assert check(items[:1] + [{"role": "user", "content": "summary"}] + items[5:]) == []


def test_encrypted_content_must_pass_byte_for_byte():
    items = codex_input()
    items[2] = {**items[2], "encrypted_content": "gAAAA-one-altered"}
    [p] = check(items)
    assert "encrypted content" in p
    items = codex_input()
    items[2] = {"summary": [], "type": "reasoning", "id": "rs_1", "encrypted_content": "gAAAA-one"}  # keys reordered
    assert check(items) != []


@pytest.mark.parametrize("drop", [2, 3])
def test_reasoning_and_its_call_go_together(drop):
    items = codex_input()
    out = items[:drop] + items[drop + 1:]
    if drop == 3:  # the call's output must go with it, or pairing fails first
        out = [it for it in out if it.get("call_id") != "call_1"]
    problems = check(out)
    assert any("separated" in p for p in problems), problems


def test_reasoning_must_stay_right_before_its_call():
    items = codex_input()
    moved = items[:2] + [items[2], {"role": "user", "content": "in between"}] + items[3:]
    assert any("separated" in p for p in check(moved))


def test_the_clients_own_defects_are_not_ours():
    items = codex_input()[:3]  # a reasoning item last, as the client sent it
    assert check(items, items) == []
    assert check(copy.deepcopy(items), items) == []


def test_compaction_items_pass_byte_for_byte():
    items = codex_input()
    items.insert(1, {"type": "compaction", "encrypted_content": "gAAAA-summary-by-codex"})
    assert check(copy.deepcopy(items), items) == []
    bad = copy.deepcopy(items)
    bad[1]["encrypted_content"] = "gAAAA-other"
    assert check(bad, items) != []


# -- the stages on Codex-shaped requests -----------------------------------------------------------

@pytest.fixture
def harness(tmp_path):
    h = Harness(tmp_path, overrides=settings_overrides(
        window=4000, stages=["clearing", "compaction"],
        clearing={"trigger_tokens": 1000, "keep_recent": 1, "clear_at_least": 100, "min_result_tokens": 50},
        compaction={"protect_recent_turns": 1, "min_span_tokens": 200, "soft_threshold": 0.3,
                    "hard_threshold": 0.4, "target": 0.2}))
    yield h
    h.close()


def test_previous_response_id_requests_are_left_alone(harness):
    # over Codex's WebSocket a step carries only its new items; the rest is on the server
    body = {"model": "gpt-5-codex", "previous_response_id": "resp_9", "store": False, "prompt_cache_key": "s-prev",
            "input": [{"type": "function_call_output", "call_id": f"call_{i}", "output": words(800, i)} for i in range(4)]}
    sent = harness.send(R, copy.deepcopy(body))
    assert not sent.changed and sent.body == body


def test_codex_compaction_item_and_what_precedes_it_are_kept(harness):
    body = responses_tool_loop(12, result_words=300, session="s-compaction-item")
    codex_item = {"type": "compaction", "encrypted_content": "gAAAA-codex-summary"}
    body["input"].insert(6, codex_item)
    original = copy.deepcopy(body)
    sent = harness.send(R, body)
    assert sent.changed, sent.outcome.reason
    out = sent.body["input"]
    # up to and including Codex's own compaction item, nothing is compacted (clearing may stub an output)
    shape = lambda items: [(it.get("type"), it.get("role"), it.get("call_id")) for it in items]  # noqa: E731
    assert out[6] == codex_item and shape(out[:7]) == shape(original["input"][:7])
    assert any(isinstance(it, dict) and str(it.get("content", "")).startswith("[contextwarden: summary") for it in out[7:])
    assert validate_rewrite(R, sent.body, original) == []
