"""Session control end to end: a real ``mitmdump`` (claude-code profile, a 64K window, the thresholds of
test_small_window) in front of the strict stand-in; the commands through the real ``contextwarden
session`` CLI talking to the proxy's local API.

- the real Claude Code CLI in a long tool loop: its own history grows past 1.5x the window, it never
  sends a compaction request of its own (it decides auto-compaction from the usage of its last
  response, which is what the proxy sent), every request upstream fits the window and is accepted;
- rollback: after a compaction, the next request carries the client's own messages for the span;
  rollback of the rollback puts the same summary back, byte for byte; count_tokens counts the decided state;
- a pinned tool result survives the clearing step that takes its neighbours;
- past the window, the provider's own "prompt is too long" reaches the client untouched.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.support.claude_code import run_claude
from tests.support.proxy import ProxyProcess
from tests.support.sdk import anthropic

from .conftest import Route
from .test_small_window import SETTINGS, WINDOW, _result_text, accepted, big_file, pasted, summary_index
from .test_small_window import file_loop as small_window_loop

ROUNDS = 13  # ~7.5K tokens of history a round: the CLI's own history passes 1.5 x 64K (measured 1.89x at 15)
DONE = "SESSION-CONTROL-DONE"
MODEL = "claude-opus-4-8"
BASH = {"name": "Bash", "description": "Run a shell command",
        "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}
CLIENT_COMPACTION = "detailed summary of the conversation so far"  # Claude Code's own compaction prompt


@pytest.fixture(scope="module")
def ctl(tmp_path_factory, standin):
    proxy = ProxyProcess(tmp_path_factory.mktemp("session-control"), name="session-control", profile="claude-code",
                         redirect=standin.url, env={**SETTINGS, "CONTEXTWARDEN_MEMORY__ENABLED": "false"},
                         ready_events=("startup",))
    proxy.start()
    try:
        yield Route(proxy, regular=True, label="session-control")
    finally:
        proxy.stop(timeout=3)


@pytest.fixture
def strict(standin):
    standin.strict = True
    return standin


def cli(route: Route, *args: str) -> dict:
    """``contextwarden session ... --json`` against the proxy's home (the real CLI)."""
    r = subprocess.run([sys.executable, "-m", "contextwarden", "session", "--home", str(route.proxy.home), "--json", *args],
                       capture_output=True, text=True, timeout=60, env={**os.environ})
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


def cli_text(route: Route, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "contextwarden", "session", "--home", str(route.proxy.home), *args],
                       capture_output=True, text=True, timeout=60, env={**os.environ})
    assert r.returncode == 0, r.stderr
    return r.stdout


def sdk(route: Route, sid: str) -> anthropic.Anthropic:
    return route.anthropic(default_headers={"x-contextwarden-session": sid})


# -- (a) the real Claude Code CLI never compacts on its own ------------------------------------------


def file_loop(api: str, body: dict):
    return small_window_loop(api, body, ROUNDS, DONE)


@pytest.mark.claude_code
def test_claude_code_never_compacts_on_its_own(ctl: Route, strict, claude_bin, tmp_path):
    strict.planner = file_loop
    strict.thinking = True  # signed thinking blocks, as the real API gives Claude Code
    strict.window = WINDOW  # a request past the window gets the API's "prompt is too long"
    since = ctl.proxy.mark()
    result = run_claude(claude_bin, tmp_path, ctl.claude_env(), f"Read big_01.txt to big_{ROUNDS:02d}.txt one by one.",
                        files={f"big_{n:02d}.txt": big_file(n) for n in range(1, ROUNDS + 1)}, timeout=240)
    assert result.returncode == 0, f"claude exited {result.returncode}:\n{result.stdout}\n{result.stderr[-3000:]}"
    assert DONE in result.stdout, result.stdout
    recs = strict.requests("/v1/messages")
    accepted(recs)  # every request upstream accepted: none past the window, none the strict checks refuse
    assert len(recs) == ROUNDS + 1
    assert not any(CLIENT_COMPACTION in r.decoded_body().decode("utf-8", "replace") for r in recs)
    reqs = ctl.proxy.wait_events(lambda e: e["type"] == "request", len(recs), since=since, timeout=20)
    fwd = ctl.proxy.wait_events(lambda e: e["type"] == "forward", len(recs), since=since, timeout=20)
    raw = max(e["data"]["tokens_in"] for e in reqs)
    sent = max(e["data"]["tokens_out"] for e in fwd)
    assert raw > 1.5 * WINDOW, raw  # the client's own history
    assert sent < WINDOW, sent
    # the versions the proxy made, as the CLI shows them
    sid = reqs[-1]["session"]
    shown = cli(ctl, "show", sid)
    stages = [v["stage"] for v in shown["version_list"]]
    assert "clearing" in stages and "compaction" in stages, stages
    assert all(v["tokens_after"] < v["tokens_before"] for v in shown["version_list"])
    counted = strict.requests("/v1/messages/count_tokens")
    print(f"\nclaude code, {len(recs)} requests, {len(counted)} count_tokens: client history up to {raw} tokens ({raw / WINDOW:.2f}x the window), "
          f"sent at most {sent}; versions {[(v['n'], v['stage'], v['trigger']) for v in shown['version_list']]}")


# -- (b) rollback, and rollback of the rollback -------------------------------------------------------


def long_talk(turns: int) -> list[dict]:
    """A conversation of long pasted user turns (nothing for clearing): compaction's case."""
    msgs: list[dict] = []
    for t in range(turns):
        msgs.append({"role": "user", "content": f"Task {t}: {pasted(t)}"})
        msgs.append({"role": "assistant", "content": f"Noted the requirements of task {t}."})
    msgs.append({"role": "user", "content": "Now summarise every requirement."})
    return msgs


def test_rollback_restores_the_span_and_its_undo_the_summary_byte_for_byte(ctl: Route, strict):
    client = sdk(ctl, "rollback-e2e")
    msgs = long_talk(12)  # ~46K tokens: past the hard threshold (68% of 64K), under the window
    client.messages.create(model=MODEL, max_tokens=64, system="You are careful.", messages=msgs)
    first = strict.requests("/v1/messages")[-1].json()["messages"]
    assert summary_index(first) == 0, "no compaction"
    shown = cli(ctl, "show", "rollback-e2e")
    assert [(v["n"], v["stage"]) for v in shown["version_list"]] == [(1, "compaction")]
    span = shown["version_list"][0]["span"]

    # count_tokens is answered for what the proxy sends, and changes nothing
    counted = client.messages.count_tokens(model=MODEL, system="You are careful.", messages=msgs).input_tokens
    ct = strict.requests("/v1/messages/count_tokens")[-1].json()["messages"]
    assert ct == first and counted < len(json.dumps(msgs)) // 4
    assert cli(ctl, "show", "rollback-e2e")["current"] == 1

    dry = cli(ctl, "rollback", "rollback-e2e", "--to", "0", "--dry-run")
    assert dry["fits"] and not dry["applied"] and dry["rewrite_tokens"] > 0 and dry["rewrite_usd"] > 0
    done = cli(ctl, "rollback", "rollback-e2e", "--to", "0")
    assert done["applied"] and done["version"] == 2
    client.messages.create(model=MODEL, max_tokens=64, system="You are careful.", messages=msgs)
    restored = strict.requests("/v1/messages")[-1].json()["messages"]
    assert summary_index(restored) is None
    assert restored[span[0]:span[1] + 1] == msgs[span[0]:span[1] + 1]  # the client's own messages for the span

    back = cli(ctl, "rollback", "rollback-e2e", "--to", "1")
    assert back["applied"] and back["version"] == 3
    client.messages.create(model=MODEL, max_tokens=64, system="You are careful.", messages=msgs)
    again = strict.requests("/v1/messages")[-1].json()["messages"]
    assert json.dumps(again[:-1]).encode() == json.dumps(first[:-1]).encode()
    assert [v["kind"] for v in cli(ctl, "show", "rollback-e2e")["version_list"]] == ["decision", "rollback", "rollback"]
    text = cli_text(ctl, "show", "rollback-e2e")
    assert "v0   (the client's own history)" in text and "rollback to v0" in text and "rollback to v1" in text
    assert re.search(r"v1 +\S+ +compaction +(hard|soft)", text), text
    accepted(strict.requests("/v1/messages")[-3:])


# -- (c) pins ------------------------------------------------------------------------------------------


def tool_talk(rounds: int) -> list[dict]:
    msgs: list[dict] = [{"role": "user", "content": "Read every data file."}]
    for n in range(1, rounds + 1):
        tid = f"toolu_pin_{n:02d}"
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": f"Reading file {n}."},
                                                      {"type": "tool_use", "id": tid, "name": "Bash", "input": {"command": f"cat big_{n:02d}.txt"}}]})
        msgs.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": tid, "content": big_file(n)}]})
    msgs.append({"role": "assistant", "content": "All files read."})
    msgs.append({"role": "user", "content": "Which record had the largest value?"})
    return msgs


def test_a_pinned_tool_result_survives_the_clearing_step_that_takes_its_neighbours(ctl: Route, strict):
    client = sdk(ctl, "pin-e2e")
    msgs = tool_talk(9)  # ~37K tokens: past clearing's 30K
    client.messages.create(model=MODEL, max_tokens=64, tools=[BASH], messages=msgs[:1])  # the proxy knows the session
    pins = cli(ctl, "pin", "pin-e2e", "toolu_pin_02")["pins"]
    assert [(p["kind"], p["value"]) for p in pins] == [("tool", "toolu_pin_02")]
    client.messages.create(model=MODEL, max_tokens=64, tools=[BASH], messages=msgs)
    body = strict.requests("/v1/messages")[-1].json()["messages"]
    results = {b["tool_use_id"]: _result_text(b) for m in body if isinstance(m["content"], list)
               for b in m["content"] if b.get("type") == "tool_result"}
    assert results["toolu_pin_02"] == big_file(2)
    for n in (1, 3):  # clearing takes the oldest first: the pinned one's neighbours
        assert results[f"toolu_pin_{n:02d}"].startswith("[contextwarden cleared this "), n
    v = cli(ctl, "show", "pin-e2e")["version_list"]
    assert v and v[0]["stage"] == "clearing" and "toolu_pin_02" not in v[0]["tool_ids"] and "toolu_pin_03" in v[0]["tool_ids"]
    accepted(strict.requests("/v1/messages")[-1:])


# -- past the window: the provider's own error reaches the client --------------------------------------


def test_a_history_past_the_window_gets_the_providers_prompt_is_too_long(ctl: Route, strict):
    strict.window = WINDOW
    client = ctl.anthropic(default_headers={"x-contextwarden-session": "too-long-e2e", "x-contextwarden-bypass": "1"})
    msgs = long_talk(24)  # ~90K tokens as the client sends them; bypassed, so nothing rewrites it
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model=MODEL, max_tokens=64, messages=msgs)
    assert "prompt is too long" in str(err.value)
    assert strict.requests("/v1/messages")[-1].status == 400


@pytest.mark.claude_code
def test_claude_code_answers_prompt_is_too_long_with_its_own_compaction(ctl: Route, strict, claude_bin, tmp_path):
    """What happens once the client's own history outgrows the window and the proxy does not rewrite it
    (here the session is bypassed; the same holds when failing open has only the client's history to
    send): the provider's "prompt is too long" reaches Claude Code untouched, and Claude Code answers it
    with its own compaction request, then carries on from its summary."""
    compacted: list[int] = []

    def planner(api: str, body: dict):
        last = json.dumps((body.get("messages") or [{}])[-1])
        if CLIENT_COMPACTION in last:
            compacted.append(len(body["messages"]))
            return "<analysis>Files read so far.</analysis>\n<summary>The user asked to read the big files; some are read. " \
                   "Continue with the task.</summary>", None
        if compacted:
            return f"All files read. {DONE}", None
        return file_loop(api, body)

    strict.planner = planner
    strict.thinking = True
    strict.window = 30_000  # the stand-in's own count (bytes / 4): passed after a few rounds
    env = {**ctl.claude_env(), "ANTHROPIC_CUSTOM_HEADERS": "x-contextwarden-bypass: 1"}
    result = run_claude(claude_bin, tmp_path, env, f"Read big_01.txt to big_{ROUNDS:02d}.txt one by one.",
                        files={f"big_{n:02d}.txt": big_file(n) for n in range(1, ROUNDS + 1)}, timeout=240)
    assert result.returncode == 0, f"claude exited {result.returncode}:\n{result.stdout}\n{result.stderr[-3000:]}"
    assert DONE in result.stdout
    recs = strict.requests("/v1/messages")
    rows = [(r.status, CLIENT_COMPACTION in r.decoded_body().decode("utf-8", "replace"), len(r.decoded_body())) for r in recs]
    first_400 = next(i for i, r in enumerate(rows) if r[0] == 400)
    assert "prompt is too long" in recs[first_400].response_body.decode()
    assert not any(r[1] for r in rows[:first_400])  # no compaction of its own before the error
    assert rows[first_400 + 1][:2] == (200, True), rows  # its answer: its own compaction request
    assert rows[first_400 + 2][0] == 200 and rows[first_400 + 2][2] < rows[first_400][2], rows  # then on, smaller
    print(f"\nclaude code past the window: {[(s, c) for s, c, _ in rows]}")
