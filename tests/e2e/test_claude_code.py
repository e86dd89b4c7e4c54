"""The real Claude Code CLI runs a tool-use loop through the proxy (regular mode with TLS interception,
and reverse mode through ANTHROPIC_BASE_URL); the stand-in upstream sees the expected requests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.claude_code import claude_code_binary

from .conftest import Route

pytestmark = pytest.mark.claude_code

API_KEY = "sk-ant-api03-e2eClaudeCodeKey-0123456789abcdef"
MARKER_FILE = "hello_warden.txt"


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    return claude_code_binary()


def claude_env(home: Path, route_env: dict[str, str]) -> dict[str, str]:
    """A clean environment: no proxy or Anthropic settings of the developer's leak in."""
    env = {k: v for k, v in os.environ.items()
           if not (k.upper().endswith("_PROXY") or k.startswith(("ANTHROPIC_", "CLAUDE_")))}
    env.update(HOME=str(home), ANTHROPIC_API_KEY=API_KEY, CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
               DISABLE_AUTOUPDATER="1", **route_env)
    return env


def route_env(route: Route, base_url: str | None = None) -> dict[str, str]:
    if route.regular:
        return {"HTTPS_PROXY": route.proxy.url, "NODE_EXTRA_CA_CERTS": str(route.proxy.ca_pem)}
    return {"ANTHROPIC_BASE_URL": base_url or route.proxy.url}


def run_claude(claude_bin: Path, tmp_path: Path, env_extra: dict[str, str],
               prompt: str = "list the files here") -> subprocess.CompletedProcess:
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    (work / MARKER_FILE).write_text("contextwarden e2e\n")
    return subprocess.run([str(claude_bin), "-p", prompt, "--allowedTools", "Bash"], cwd=work,
                          env=claude_env(home, env_extra), capture_output=True, text=True, timeout=180)


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


def assert_no_secret(proxy, secret: str) -> None:
    needle = secret.encode()
    leaks = [str(p) for p in proxy.home.rglob("*") if p.is_file() and needle in p.read_bytes()]
    assert not leaks, f"the credential was written to {leaks}"
    assert secret not in proxy.output_text(), "the credential appeared in mitmdump's output"


def test_claude_code_tool_loop(route: Route, standin, claude_bin, tmp_path):
    since = route.proxy.mark()
    result = run_claude(claude_bin, tmp_path, route_env(route))
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
    route.proxy.wait_events(lambda e: e["type"] == "turn", len(calls), since=since, timeout=5)
    assert_no_secret(route.proxy, API_KEY)
