"""The way back, end to end: the real Claude Code CLI runs ``contextwarden mcp`` and recalls a cleared result.

A real ``mitmdump`` (regular mode, the claude-code profile, memory on) sits between the CLI and the strict
stand-in upstream. The stand-in scripts a tool loop: Claude Code really runs ``cat big_NN.txt`` a few
times until clearing fires; then, seeing a stub in the body it receives, the stand-in answers with a call
of the MCP recall tool (``mcp__contextwarden__recall``) for the id the stub names. Claude Code runs the
tool through ``contextwarden mcp`` (configured with ``--mcp-config``), which asks the proxy's recall API,
and the next request the upstream receives holds the full original text as the tool's result.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.claude_code import API_KEY, claude_env
from tests.support.proxy import ProxyProcess

from .conftest import Route
from .test_small_window import _result_text, accepted, big_file

SETTINGS = {
    "CONTEXTWARDEN_TOKENS__CALIBRATE": "false",
    "CONTEXTWARDEN_CLEARING__ENABLED": "true",
    "CONTEXTWARDEN_CLEARING__TRIGGER_TOKENS": "18000",
    "CONTEXTWARDEN_CLEARING__KEEP_RECENT": "1",
    "CONTEXTWARDEN_CLEARING__CLEAR_AT_LEAST": "2000",
    "CONTEXTWARDEN_CLEARING__MIN_RESULT_TOKENS": "500",
    "CONTEXTWARDEN_COMPACTION__ENABLED": "false",
    "CONTEXTWARDEN_MEMORY__INJECT": "false",  # what arrives is the tool's result, not injected memory
    "CONTEXTWARDEN_COMPRESSION__ENABLED": "false",  # the files arrive whole, so that clearing is what takes them out
}
TOOL = "mcp__contextwarden__recall"
STUB_ID = re.compile(r"Memory id (m-[0-9a-f]{16})")
DONE = "RECALL-DONE"
ROUNDS = 6


@pytest.fixture(scope="module")
def recall_proxy(tmp_path_factory, standin):
    proxy = ProxyProcess(tmp_path_factory.mktemp("recall-e2e"), name="recall-e2e", profile="claude-code",
                         redirect=standin.url, env=SETTINGS, ready_events=("startup", "memory_status"))
    proxy.start()
    try:
        yield Route(proxy, regular=True, label="recall-e2e")
    finally:
        proxy.stop(timeout=3)


def _texts(body: dict) -> list[tuple[str, str]]:
    """(tool_use_id, text) of every tool result in the body, in order."""
    return [(b["tool_use_id"], _result_text(b)) for m in body.get("messages") or [] if m.get("role") == "user"
            and isinstance(m.get("content"), list) for b in m["content"] if b.get("type") == "tool_result"]


def planner(state: dict):
    def plan(api: str, body: dict):
        if api != "anthropic" or not any(t.get("name") == "Bash" for t in body.get("tools") or [] if isinstance(t, dict)):
            return None
        results = _texts(body)
        names = {t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)}
        if TOOL not in names and "WaitForMcpServers" in names and state.get("waited", 0) < 6:
            # Claude Code connects MCP servers in the background: a model that wants one waits for it
            state["waited"] = state.get("waited", 0) + 1
            return "Waiting for the MCP servers.", ("WaitForMcpServers", {})
        if state.get("asked"):
            return f"Got it back. {DONE}", None
        stubbed = [t for _, t in results if t.startswith("[contextwarden cleared this ")]
        if stubbed and len(results) >= 2:
            state["asked"] = STUB_ID.search(stubbed[0]).group(1)
            state["stub"] = stubbed[0]
            return "I need the first file again.", (TOOL, {"id": state["asked"]})
        n = sum(t.startswith(("BIGFILE", "[contextwarden cleared")) for _, t in results)
        if n >= ROUNDS:
            return f"Nothing was cleared. {DONE}", None
        return f"Reading file {n + 1}.", ("Bash", {"command": f"cat big_{n + 1:02d}.txt", "description": f"Show file {n + 1}"})
    return plan


@pytest.mark.claude_code
def test_claude_code_recalls_a_cleared_result_through_contextwarden_mcp(recall_proxy: Route, standin, claude_bin, tmp_path):
    standin.strict = True
    standin.thinking = True  # Claude Code enables thinking: the strict checks want it answered so
    state: dict = {}
    standin.planner = planner(state)
    proxy = recall_proxy.proxy
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    files = {f"big_{n:02d}.txt": big_file(n) for n in range(1, ROUNDS + 1)}
    for name, text in files.items():
        (work / name).write_text(text)
    exe = str(Path(sys.executable).parent / "contextwarden")
    mcp_config = {"mcpServers": {"contextwarden": {"type": "stdio", "command": exe, "args": ["mcp", "--home", str(proxy.home)]}}}
    env = claude_env(home, {**recall_proxy.claude_env(), "ENABLE_TOOL_SEARCH": "false", "MCP_TIMEOUT": "60000"})
    result = subprocess.run([str(claude_bin), "-p", "Read the big files one by one.", "--allowedTools", f"Bash,{TOOL}",
                             "--mcp-config", json.dumps(mcp_config), "--strict-mcp-config"],
                            cwd=work, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"claude exited {result.returncode}:\n{result.stdout}\n{result.stderr[-3000:]}"
    assert DONE in result.stdout, result.stdout
    recs = standin.requests("/v1/messages")
    accepted(recs)
    bodies = [r.json() for r in recs if any(isinstance(t, dict) and t.get("name") == "Bash" for t in r.json().get("tools") or [])]
    # the MCP tool is offered to the model (once Claude Code has connected the server), so the stubs name it
    assert any(t.get("name") == TOOL for t in bodies[-1]["tools"]), [t.get("name") for t in bodies[-1]["tools"]]
    mid = state.get("asked")
    assert mid, "clearing never fired:\n" + "\n".join(str(len(_texts(b))) for b in bodies)
    assert f"Memory id {mid}: call {TOOL} with this id to get it back verbatim, or re-run the tool.]" in state["stub"]
    # the original the stub replaced, as Claude Code sent it before clearing
    original = next(t for b in bodies for _, t in _texts(b) if t.startswith("BIGFILE 01 START"))
    assert len(original) > 4000
    # the request after the recall call: its last tool result is the MCP tool's answer, the whole original
    last = bodies[-1]
    tid, recalled = _texts(last)[-1]
    call = next(b for m in last["messages"] if m["role"] == "assistant" and isinstance(m["content"], list)
                for b in m["content"] if b.get("type") == "tool_use" and b.get("id") == tid)
    assert call["name"] == TOOL and call["input"] == {"id": mid}
    assert original.strip() in recalled

    # a second terminal while the proxy serves traffic: the CLI goes through its recall API, per tenant
    got = subprocess.run([exe, "recall", mid, "--home", str(proxy.home), "--api-key", API_KEY],
                         capture_output=True, text=True, timeout=120)
    assert got.returncode == 0 and got.stdout.strip() == original.strip(), got.stderr
    other = subprocess.run([exe, "recall", mid, "--home", str(proxy.home), "--api-key", "sk-ant-someone-else"],
                           capture_output=True, text=True, timeout=120)
    assert other.returncode == 1 and other.stdout == "" and "not found" in other.stderr
    # search answers through the running proxy (its model and index are loaded), within the caller's tenant
    found = subprocess.run([exe, "search", "BIGFILE 01 START bravo charlie", "--home", str(proxy.home),
                            "--api-key", API_KEY, "--limit", "3"], capture_output=True, text=True, timeout=120)
    assert found.returncode == 0 and "through the running proxy" in found.stdout.splitlines()[0], found.stdout + found.stderr
    mine = subprocess.run([exe, "search", "BIGFILE 01 START bravo charlie", "--home", str(proxy.home),
                           "--api-key", API_KEY, "--json", "--limit", "3"], capture_output=True, text=True, timeout=120)
    hits = [json.loads(line) for line in mine.stdout.splitlines() if line.strip()]
    assert hits and {h["tenant"] for h in hits} == {hits[0]["tenant"]}
    theirs = subprocess.run([exe, "search", "BIGFILE 01 START bravo charlie", "--home", str(proxy.home),
                             "--api-key", "sk-ant-someone-else", "--json"], capture_output=True, text=True, timeout=120)
    assert theirs.returncode == 0 and theirs.stdout.strip() == ""
