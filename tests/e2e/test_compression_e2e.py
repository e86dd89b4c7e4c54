"""Tool-output compression end to end: a real ``mitmdump`` (claude-code profile, compression on, memory in
its own process) in front of the strict stand-in upstream (400 for any body the real API would reject).

A client's tool loop sends a 5,000-line build log as the newest tool result: the upstream receives it
compressed (first line: compressed, share kept, memory id), every error line in it; the whole log is
recallable verbatim through the running proxy (``contextwarden recall ID``) as soon as the response is
back; the next request of the loop carries the same compressed text byte for byte.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid

import httpx
import pytest

from tests.support import tool_outputs as T
from tests.support.proxy import ProxyProcess

PREFIX = "[contextwarden compressed this "
MID = re.compile(r"Memory id (m-[0-9a-f]{16})")
KEY = "sk-ant-compression-e2e"
SETTINGS = {
    "CONTEXTWARDEN_TOKENS__CALIBRATE": "false",
    "CONTEXTWARDEN_COMPRESSION__ENABLED": "true",
    "CONTEXTWARDEN_MEMORY__INJECT": "false",  # what arrives is the tool's result, not injected memory
    # a hang's bound, not a test's: at load 25 the compression worker took more than the 5 s these were
    "CONTEXTWARDEN_PIPELINE__BUDGETS_MS": json.dumps({"compression": 60000, "clearing": 60000, "recall": 60000}),
}


@pytest.fixture
def strict(standin):
    standin.strict = True
    return standin


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, standin):
    """The tests' proxy, in front of the stand-in (each reads only the events after its own ``mark``)."""
    p = ProxyProcess(tmp_path_factory.mktemp("compression-e2e"), name="compression-e2e", profile="claude-code",
                     reverse=standin.url, env=SETTINGS, ready_events=("startup", "memory_status")).start()
    yield p
    p.stop(timeout=5)


def child_cmdlines(pid: int) -> list[str]:
    """The command lines of a process's descendants (Linux /proc): mitmdump's engine and its children."""
    from pathlib import Path

    out = []
    for t in Path(f"/proc/{pid}/task").glob("*/children"):
        for c in t.read_text().split():
            try:
                out.append(Path(f"/proc/{c}/cmdline").read_bytes().replace(b"\0", b" ").decode())
                out += child_cmdlines(int(c))
            except OSError:
                pass
    return out


def body(session: str, log: str, steps: int) -> dict:
    msgs: list[dict] = [{"role": "user", "content": [{"type": "text", "text": f"Task {session}: the build fails, fix it."}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "Running the build."},
                                                          {"type": "tool_use", "id": "toolu_build", "name": "Bash",
                                                           "input": {"command": "make -j8"}}]},
                        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_build", "content": log}]}]
    for i in range(1, steps):
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": f"Looking at step {i}."},
                                                      {"type": "tool_use", "id": f"toolu_s{i}", "name": "Bash",
                                                       "input": {"command": f"sed -n {i}p src/a.c"}}]})
        msgs.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_s{i}", "content": f"line {i}"}]})
    msgs[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
    return {"model": "claude-sonnet-4-5", "max_tokens": 256,
            "system": [{"type": "text", "text": "You are a careful agent.", "cache_control": {"type": "ephemeral"}}],
            "messages": msgs}


def test_compressed_at_first_sight_recallable_and_reapplied_byte_for_byte(proxy, strict):
    log, errors = T.build_log()
    since = proxy.mark()
    session = uuid.uuid4().hex[:8]
    got = []
    with httpx.Client(timeout=60) as c:
        for steps in (1, 2, 3):
            r = c.post(proxy.url + "/v1/messages", content=json.dumps(body(session, log, steps)).encode(),
                       headers={"content-type": "application/json", "x-api-key": KEY})
            assert r.status_code == 200, r.text
            got.append(strict.requests("/v1/messages")[-1])
            if steps == 1:
                # the whole output is kept before the compressed request was sent: recallable now
                first = got[0].json()["messages"][-1]["content"][0]["content"]
                mid = MID.search(first.split("\n", 1)[0]).group(1)
                out = subprocess.run([sys.executable, "-m", "contextwarden", "recall", mid, "--home", str(proxy.home),
                                      "--api-key", KEY], capture_output=True, timeout=120)
                assert out.returncode == 0, out.stderr.decode()
                assert out.stdout.decode() == log + "\n"
    assert all(not rec.problems for rec in got)
    head, rest = first.split("\n", 1)
    assert head.startswith(PREFIX + "Bash result for make -j8 (") and "kept 1% of 373,270 characters" in head
    assert all(e in rest for e in errors)
    for rec in got[1:]:
        assert rec.json()["messages"][2]["content"][0]["content"] == first  # byte for byte
    ev = proxy.events("compression", since=since)
    assert len(ev) == 1 and ev[0]["data"]["compressed"] == 1 and ev[0]["data"]["ids"] == [mid]
    fwd = proxy.events("forward", since=since)
    assert all(e["data"]["fallback"] is None for e in fwd)
    assert fwd[0]["data"]["tokens_out"] < fwd[0]["data"]["tokens_in"] // 10
    # compressed in the proxy's compression worker (compression.process auto: separate in mitmdump)
    assert any("contextwarden.core.workerpool compression" in cmd for cmd in child_cmdlines(proxy.proc.pid))
    assert not [e for e in proxy.events("error", since=since) if e["data"].get("where") == "compression"]


@pytest.mark.claude_code
def test_the_real_claude_code_cli_runs_with_compression_on(tmp_path, proxy, standin, claude_bin):
    """Claude Code runs ``cat build.log`` through the proxy (reverse mode): the upstream receives the
    output compressed in the request that carries it, every failing test still named, and the CLI's
    turn completes."""
    from tests.support.claude_code import run_claude

    from .conftest import Route

    since = proxy.mark()
    saved = standin.tool_input
    standin.tool_input = {"command": "cat build.log", "description": "Show the test log"}
    try:
        log, failed = T.failing_pytest(400, failing=(17, 204, 377))
        assert 5_000 < len(log) < 30_000  # (Claude Code truncates a Bash output past 30,000 characters)
        result = run_claude(claude_bin, tmp_path, Route(proxy, False, "compression-e2e").claude_env(),
                            prompt="run the tests", files={"build.log": log})
        assert result.returncode == 0, f"claude exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        calls = standin.requests("/v1/messages")
        results = [b for r in calls for m in r.json()["messages"] if m["role"] == "user" and isinstance(m["content"], list)
                   for b in m["content"] if b.get("type") == "tool_result"]
        assert results
        text = results[-1]["content"] if isinstance(results[-1]["content"], str) else results[-1]["content"][0]["text"]
        assert text.startswith(PREFIX + "Bash result for cat build.log ("), text[:300]
        assert all(f"FAILED {name}" in text for name in failed)
        assert not any(r.problems for r in calls)
        assert proxy.events("compression", since=since)
    finally:
        standin.tool_input = saved
