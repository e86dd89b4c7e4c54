"""The stand-in upstream's strict mode (what the small-window end-to-end tests rely on) rejects what
the real APIs reject, and accepts what real clients send."""

from __future__ import annotations

import copy
import json

import httpx
import pytest

from tests.conftest import EVAL_DIR
from tests.support.upstream import StandIn, strict_problems, thinking_signature

M = "/v1/messages"


def body(*msgs, **extra) -> dict:
    return {"model": "claude-opus-4-8", "max_tokens": 100, "messages": list(msgs), **extra}


def use(tid: str, inp=None) -> dict:
    return {"type": "tool_use", "id": tid, "name": "Bash", "input": {"command": "ls"} if inp is None else inp}


def result(tid: str) -> dict:
    return {"type": "tool_result", "tool_use_id": tid, "content": "a.txt"}


def signed(text: str) -> dict:
    return {"type": "thinking", "thinking": text, "signature": thinking_signature(text)}


GOOD = body({"role": "user", "content": "hi"},
            {"role": "system", "content": "A reminder the client inserted."},
            {"role": "assistant", "content": [signed("plan"), use("t1")]},
            {"role": "user", "content": [result("t1")]},
            {"role": "system", "content": "Another reminder, last."},
            thinking={"type": "adaptive"})


@pytest.mark.parametrize("name", ["turn1", "turn2"])
def test_real_claude_code_bodies_pass(name):
    b = json.loads((EVAL_DIR / "requests" / f"claude-code-2.1.197-{name}.json").read_text())
    assert strict_problems(M, b) == []


def test_role_system_messages_anywhere_are_fine():
    assert strict_problems(M, GOOD, signed_thinking=True) == []


def _broken(fn) -> list[str]:
    b = copy.deepcopy(GOOD)
    fn(b["messages"])
    return strict_problems(M, b, signed_thinking=True)


@pytest.mark.parametrize("breaks,expect", [
    (lambda m: m[3]["content"].__setitem__(0, result("t9")), "unexpected `tool_use_id`"),
    (lambda m: m.__setitem__(3, {"role": "user", "content": "no result"}), "without `tool_result`"),
    (lambda m: m.insert(3, {"role": "assistant", "content": "again"}), "roles must alternate"),
    (lambda m: m.__setitem__(0, {"role": "assistant", "content": "first"}), "first message"),
    (lambda m: m.__setitem__(0, {"role": "user", "content": []}), "non-empty content"),
    (lambda m: m.__setitem__(0, {"role": "user", "content": [{"type": "text", "text": "  "}]}), "non-empty"),
    (lambda m: m[2]["content"][1].__setitem__("input", "not an object"), "valid dictionary"),
    (lambda m: m[2]["content"][0].__setitem__("thinking", "changed"), "Invalid `signature`"),
    (lambda m: m[2]["content"].pop(0), "must start with a thinking block"),
    (lambda m: m[0].__setitem__("content", [{"type": "text", "text": f"b{i}", "cache_control": {"type": "ephemeral"}}
                                             for i in range(5)]), "maximum of 4"),
])
def test_what_the_api_rejects_is_found(breaks, expect):
    problems = _broken(breaks)
    assert any(expect in p for p in problems), problems


def test_openai_pairing():
    ok = {"model": "gpt-4o", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "r"}]}
    assert strict_problems("/v1/chat/completions", ok) == []
    bad = copy.deepcopy(ok)
    bad["messages"][2]["tool_call_id"] = "c2"
    assert strict_problems("/v1/chat/completions", bad)
    resp = {"model": "gpt-4o", "input": [{"role": "user", "content": "x"}, {"type": "function_call_output", "call_id": "c1", "output": "r"}]}
    assert strict_problems("/v1/responses", resp)


def test_strict_standin_answers_400_invalid_request_error():
    with StandIn() as si:
        si.strict = True
        bad = body({"role": "user", "content": [result("t1")]})
        r = httpx.post(si.url + M, json=bad, headers={"x-api-key": "k"})
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "invalid_request_error" and "tool_use_id" in r.json()["error"]["message"]
        assert si.requests(M)[0].problems
        assert httpx.post(si.url + M, json=body({"role": "user", "content": "hi"})).status_code == 200
        si.reset()
        assert not si.strict and httpx.post(si.url + M, json=bad).status_code == 200  # off by default
