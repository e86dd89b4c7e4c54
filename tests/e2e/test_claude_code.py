"""The real Claude Code CLI runs a tool-use loop through the proxy (regular mode with TLS interception,
and reverse mode through ANTHROPIC_BASE_URL); the stand-in upstream sees the expected requests."""

from __future__ import annotations

import pytest

from tests.support.claude_code import API_KEY, MARKER_FILE, run_claude

from .conftest import Route

pytestmark = pytest.mark.claude_code


def check_tool_loop(standin, result) -> list:
    """The two requests of Claude Code's tool loop, as the stand-in saw them."""
    assert result.returncode == 0, f"claude exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    # the stand-in answers the tool result by quoting it: Claude Code really ran `ls` in its cwd
    assert MARKER_FILE in result.stdout, result.stdout
    calls = standin.requests("/v1/messages")
    assert len(calls) >= 2, [r.path for r in standin.requests()]
    first, second = calls[0].json(), calls[-1].json()
    assert all(r.path == "/v1/messages?beta=true" for r in calls)
    assert not any(b.get("type") == "tool_result" for m in first["messages"] if m["role"] == "user"
                   for b in (m["content"] if isinstance(m["content"], list) else []))
    assistant, user = second["messages"][-2], second["messages"][-1]
    tool_use = next(b for b in assistant["content"] if b["type"] == "tool_use")
    assert (tool_use["name"], tool_use["input"]) == ("Bash", {"command": "ls"})
    result_block = next(b for b in user["content"] if b["type"] == "tool_result")
    assert result_block["tool_use_id"] == tool_use["id"]
    text = result_block["content"] if isinstance(result_block["content"], str) else " ".join(
        c.get("text", "") for c in result_block["content"])
    assert MARKER_FILE in text
    for r in calls:
        assert r.header("x-api-key") == API_KEY
        assert r.header("anthropic-version") == "2023-06-01"
        assert "claude-code-20250219" in (r.header("anthropic-beta") or "")
        assert r.header("x-claude-code-session-id")
    return calls


def test_claude_code_tool_loop(route: Route, standin, claude_bin, tmp_path):
    since = route.proxy.mark()
    result = run_claude(claude_bin, tmp_path, route.claude_env())
    calls = check_tool_loop(standin, result)
    session = calls[0].header("x-claude-code-session-id")
    if route.regular:
        assert all(r.header("host") == "api.anthropic.com" for r in calls)

    reqs = route.proxy.wait_events(lambda e: e["type"] == "request", len(calls), since=since)
    assert len(reqs) == len(calls)
    assert all(e["data"]["session_source"] == "x-claude-code-session-id" and e["session"] == session for e in reqs)
    assert [e["data"]["messages"] for e in reqs] == [len(r.json()["messages"]) for r in calls]
    resps = route.proxy.wait_events(lambda e: e["type"] == "response", len(calls), since=since)
    assert [(e["data"]["status"], e["data"]["streamed"]) for e in resps] == [(200, True)] * len(calls)
    # the side reader assembled each streamed answer: the tool call, then the final text
    turns = route.proxy.wait_events(lambda e: e["type"] == "turn", len(calls), since=since)
    assert [(t["data"]["stop_reason"], t["data"]["tool_calls"]) for t in turns] == (
        [("tool_use", ["Bash"])] * (len(calls) - 1) + [("end_turn", [])])
    assert all(t["data"]["usage"]["output_tokens"] > 0 for t in turns)
    assert not route.proxy.leaks(API_KEY), "the API key was written by the proxy"
