"""Clearing and compaction really happen, end to end, and the upstream accepts every body.

The real Claude Code CLI and the real anthropic / openai SDKs talk through a real ``mitmdump`` (regular
mode: HTTPS_PROXY + the proxy's CA) running the ``claude-code`` profile with a small context window, to
the stand-in upstream in strict mode: it answers a 400 ``invalid_request_error`` to any body the real
API would reject (tool pairing, role order with role ``system`` messages anywhere, empty content, more
than 4 ``cache_control`` blocks, a signed thinking block that came back changed), so a test passes only
if every rewritten body would have been accepted.

Claude Code's own system prompt and tools are never touched: its first request measures ~11K tokens in
regular mode (where it defers most tools to its tool search; ~17K through ANTHROPIC_BASE_URL). The
window is sized against that, 64K, and every threshold is set explicitly with environment overrides
(so changes to the profile's defaults do not change what these tests exercise): clearing past 30K
(keep 2, at least 6K a step), compaction soft 60% / hard 68% / target 45%. The stand-in scripts a long
tool loop: each round the CLI really runs ``cat big_NN.txt`` (a ~4K-token output) and the model's
answer carries a signed thinking block and ~2.5K tokens of notes, so clearing cannot keep up alone and
compaction follows (inside the one long autonomous turn, past the hard threshold). Measured: 12
requests, the last one 91.5K tokens as the client sent it, at most 40K sent; clearing fires from the
5th request, compaction at the 8th (reused by the next three) and extended at the 12th.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from contextwarden.compress.summarise import HEADER
from tests.support.claude_code import API_KEY, run_claude
from tests.support.proxy import ProxyProcess
from tests.support.upstream import strict_problems

from .conftest import Route

# -- the proxy under test: the claude-code profile with a small window -----------------------------

WINDOW = 64_000
SETTINGS = {
    "CONTEXTWARDEN_TOKENS__CONTEXT_WINDOW": str(WINDOW),
    "CONTEXTWARDEN_TOKENS__CALIBRATE": "false",  # the stand-in's usage is an estimate: keep counts deterministic
    "CONTEXTWARDEN_CLEARING__ENABLED": "true",
    "CONTEXTWARDEN_CLEARING__TRIGGER_TOKENS": "30000",
    "CONTEXTWARDEN_CLEARING__KEEP_RECENT": "2",
    "CONTEXTWARDEN_CLEARING__CLEAR_AT_LEAST": "6000",
    "CONTEXTWARDEN_CLEARING__MIN_RESULT_TOKENS": "500",
    "CONTEXTWARDEN_CLEARING__CLEAR_TOOL_INPUTS": "true",  # the SDK conversations write whole files
    "CONTEXTWARDEN_CLEARING__WORKING_SET_TOKENS": "0",  # (the working set has its own tests)
    "CONTEXTWARDEN_COMPACTION__ENABLED": "true",
    "CONTEXTWARDEN_COMPACTION__SUMMARISER": "extractive",
    "CONTEXTWARDEN_COMPACTION__SOFT_THRESHOLD": "0.60",
    "CONTEXTWARDEN_COMPACTION__HARD_THRESHOLD": "0.68",
    "CONTEXTWARDEN_COMPACTION__TARGET": "0.45",
    "CONTEXTWARDEN_COMPACTION__PROTECT_RECENT_TURNS": "2",
    "CONTEXTWARDEN_COMPACTION__MIN_SPAN_TOKENS": "2000",
    # the files arrive whole: these tests pin how clearing and compaction share the window (compressed at
    # first sight, they would leave clearing too little to take, and compaction would come first)
    "CONTEXTWARDEN_COMPRESSION__ENABLED": "false",
    "CONTEXTWARDEN_COMPACTION__WORKING_SET_TOKENS": "0",
}
SOFT, HARD = int(0.60 * WINDOW), int(0.68 * WINDOW)


@pytest.fixture(scope="module")
def small(tmp_path_factory, standin):
    """A claude-code proxy in regular mode whose api.anthropic.com / api.openai.com is the stand-in."""
    proxy = ProxyProcess(tmp_path_factory.mktemp("small-window"), name="small-window", profile="claude-code",
                         redirect=standin.url, env=SETTINGS, ready_events=("startup", "memory_status"))
    proxy.start()
    try:
        yield Route(proxy, regular=True, label="small-window")
    finally:
        # the memory service may still be embedding the ~3 MB of history these tests sent (it finishes
        # its queue before exiting); nothing here needs it, so do not wait long
        proxy.stop(timeout=3)


@pytest.fixture
def strict(standin):
    standin.strict = True
    standin.thinking = True
    return standin


# -- what every test checks ----------------------------------------------------------------------


def accepted(recs) -> None:
    """The upstream accepted every body, and an independent check finds nothing it would reject."""
    assert recs
    assert [r.status for r in recs] == [200] * len(recs), [(r.status, r.problems) for r in recs]
    for r in recs:
        assert r.problems == []
        assert strict_problems(r.route, r.json(), signed_thinking=True) == []


def flows(proxy: ProxyProcess, since: int, n: int) -> list[dict]:
    """Per request (in order): its request, forward, clearing and compaction events."""
    reqs = proxy.wait_events(lambda e: e["type"] == "request", n, since=since, timeout=20)
    assert len(reqs) >= n
    ids = [e["flow_id"] for e in reqs]
    proxy.wait_events(lambda e: e["type"] == "forward" and e["flow_id"] in ids, len(ids), since=since, timeout=20)
    evs = proxy.events(since=since)
    out = []
    for fid, req in zip(ids, reqs):
        mine = [e for e in evs if e.get("flow_id") == fid]
        # (a stage call abandoned past its budget still makes and stores its decision, for the next
        # request; its events are marked late: they do not describe what this request sent)
        now = [e for e in mine if not e["data"].get("late")]
        out.append({"request": req["data"],
                    "forward": next(e["data"] for e in mine if e["type"] == "forward"),
                    "clearing": next((e["data"] for e in now if e["type"] == "clearing"), None),
                    "compaction": next((e["data"] for e in now if e["type"] == "compaction" and e["data"].get("applied")), None),
                    "late": {t: [e["data"] for e in mine if e["type"] == t and e["data"].get("late")
                                 and e["data"].get("applied", True)] for t in ("clearing", "compaction")}})
    return out


def summary_index(messages: list) -> int | None:
    head = HEADER.split("{", 1)[0]
    for i, m in enumerate(messages):
        c = m.get("content") if isinstance(m, dict) else None
        text = c if isinstance(c, str) else " ".join(b.get("text", "") for b in c if isinstance(b, dict)) if isinstance(c, list) else ""
        if text.startswith(head):
            return i
    return None


def _no_cc(obj):
    if isinstance(obj, dict):
        return {k: _no_cc(v) for k, v in obj.items() if k != "cache_control"}
    if isinstance(obj, list):
        return [_no_cc(v) for v in obj]
    return obj


def table(fl: list[dict]) -> str:
    """One line per request (for failure messages): messages, tokens in -> sent, clearing, compaction."""
    rows = []
    for f in fl:
        c, k = f["clearing"], f["compaction"]
        rows.append(f"{f['request']['messages']:>3} msgs {f['request']['tokens_in']:>6} -> {f['forward']['tokens_out']:>6} tokens"
                    + (f" | cleared {c['cleared']} (new {c['new']}, {c['tokens_freed']} freed)" if c else "")
                    + (f" | compacted {k['messages']} msgs ({'reused' if k['reused'] else k['trigger']})" if k else ""))
    return "\n".join(rows)


def check_effects(fl: list[dict], recs: list, key: str = "messages") -> dict:
    """Clearing and compaction fired, what was sent is smaller than what the client sent, and after a
    compaction every later request that reuses it starts with the same bytes (the cached prefix)."""
    bodies = [r.json() for r in recs]
    assert len(fl) == len(bodies)

    def made(f: dict, t: str) -> list[dict]:
        """The request's ``t`` events: its own, and those of a call abandoned past its budget (late)."""
        return ([f[t]] if f[t] else []) + f["late"][t]

    cleared = [f for f in fl if any(e["new"] for e in made(f, "clearing"))]
    compacted = [f for f in fl if any(not e["reused"] for e in made(f, "compaction"))]
    reused = [f for f in fl if f["compaction"] and f["compaction"]["reused"]]
    assert cleared, "clearing never fired:\n" + table(fl)
    assert compacted, "compaction never fired:\n" + table(fl)
    assert reused, "no request after the compaction reused it:\n" + table(fl)
    # the first clearing came before the first compaction
    first_clear = next(i for i, f in enumerate(fl) if made(f, "clearing"))
    first_compact = next(i for i, f in enumerate(fl) if made(f, "compaction"))
    assert first_clear < first_compact
    for f, body, rec in zip(fl, bodies, recs):
        fw = f["forward"]
        sent = len(rec.decoded_body())  # what the upstream received
        assert fw["bytes_in"] == f["request"]["bytes"] and fw["bytes_out"] == sent
        if f["clearing"] or f["compaction"]:
            assert fw["changed"], fw
            assert fw["bytes_out"] < fw["bytes_in"], fw
            assert fw["tokens_out"] < fw["tokens_in"], fw
            assert sent < fw["bytes_in"]
        if f["compaction"]:
            assert summary_index(body[key]) is not None
    # cache safety: consecutive requests under one compaction share the summary and the messages before
    # it byte for byte, and everything up to the previous request's end except cache markers
    pairs = 0
    for (fa, a), (fb, b) in zip(zip(fl, bodies), zip(fl[1:], bodies[1:])):
        if not (fa["compaction"] and fb["compaction"] and fb["compaction"]["reused"]):
            continue
        sa, sb = summary_index(a[key]), summary_index(b[key])
        assert sa == sb
        k = sa + 1
        assert json.dumps(a[key][:k]).encode() == json.dumps(b[key][:k]).encode()
        # unless the later request cleared more, the rest of the earlier one comes back identical apart
        # from moved cache markers (its last message may differ by the memory stage's injection)
        if not (fb["clearing"] and fb["clearing"]["new"]):
            end = len(a[key]) - 1
            assert _no_cc(a[key][k:end]) == _no_cc(b[key][k:end])
        pairs += 1
    assert pairs >= 1
    return {"requests": len(fl), "cleared": len(cleared), "compacted": len(compacted), "reused": len(reused),
            "bytes_in": sum(f["forward"]["bytes_in"] for f in fl), "bytes_out": sum(f["forward"]["bytes_out"] for f in fl)}


# -- the real Claude Code CLI ----------------------------------------------------------------------

ROUNDS = 11
DONE = "SMALL-WINDOW-DONE"
_WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


def big_file(n: int, lines: int = 190) -> str:
    rows = [f"BIGFILE {n:02d} START"]
    for i in range(lines):
        rows.append(f"{n:02d}.{i:04d} " + " ".join(_WORDS[(i * 7 + j + n) % len(_WORDS)] for j in range(8)) + f" value={i * n % 997}")
    return "\n".join(rows) + "\n"


def round_notes(n: int, sentences: int = 100) -> str:
    return " ".join(f"Round {n} note {k}: the file big_{n:02d}.txt shows record {k * 13 % 190} with value {k * n % 997}, "
                    "which we keep in mind for the final report." for k in range(sentences))


def _result_text(block: dict) -> str:
    c = block.get("content")
    return c if isinstance(c, str) else " ".join(b.get("text", "") for b in c if isinstance(b, dict)) if isinstance(c, list) else ""


def file_loop(api: str, body: dict, rounds: int = ROUNDS, done: str = DONE):
    """The stand-in's script for Claude Code: read big_01.txt .. big_NN.txt, one Bash call a round. The
    round comes from the last tool result (the history itself may be cleared or compacted by then)."""
    if api != "anthropic" or not any(isinstance(t, dict) and t.get("name") == "Bash" for t in body.get("tools") or []):
        return None
    users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
    content = users[-1].get("content") if users else None
    results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"] if isinstance(content, list) else []
    n = 0
    if results:
        m = re.search(r"BIGFILE (\d+) START", _result_text(results[-1]))
        if not m:
            return f"Stopping: the tool did not show the file ({_result_text(results[-1])[:200]!r}).", None
        n = int(m.group(1))
    if n >= rounds:
        return f"All {rounds} files read; every record is noted. {done}", None
    return round_notes(n + 1), ("Bash", {"command": f"cat big_{n + 1:02d}.txt", "description": f"Show big file {n + 1}"})


@pytest.mark.claude_code
def test_claude_code_small_window(small: Route, strict, claude_bin, tmp_path):
    strict.planner = file_loop
    since = small.proxy.mark()
    t0 = time.monotonic()
    result = run_claude(claude_bin, tmp_path, small.claude_env(), "Read big_01.txt to big_11.txt one by one and note every record.",
                        files={f"big_{n:02d}.txt": big_file(n) for n in range(1, ROUNDS + 1)}, timeout=150)
    elapsed = time.monotonic() - t0
    assert result.returncode == 0, f"claude exited {result.returncode}:\n{result.stdout}\n{result.stderr[-3000:]}"
    assert DONE in result.stdout, result.stdout

    recs = strict.requests("/v1/messages")
    accepted(recs)
    # every API call too (the CLI's GETs of /api/claude_code/settings and policy_limits get the stand-in's 404)
    assert all(r.status == 200 for r in strict.requests() if r.method == "POST"), [
        (r.method, r.path, r.status) for r in strict.requests() if r.status != 200]
    assert len(recs) == ROUNDS + 1  # one request per round, and the final answer
    bodies = [r.json() for r in recs]
    # Claude Code really ran every command: each round's result is the file it asked for
    for n, body in enumerate(bodies[1:], start=1):
        last_user = [m for m in body["messages"] if m["role"] == "user"][-1]
        assert f"BIGFILE {n:02d} START" in _result_text(next(b for b in last_user["content"] if b.get("type") == "tool_result"))

    fl = flows(small.proxy, since, len(recs))
    # the CLI writes its messages as orjson does, so the proxy does not decode again the history a request
    # had: all of it but the last message or two, where the CLI moves its cache breakpoint (from the third
    # request on; the second changes the first message, which carried the first request's breakpoint)
    known = [f["request"]["known_messages"] for f in fl]
    counts = [f["request"]["messages"] for f in fl]
    assert known[0] == 0 and all(known[i] >= counts[i - 1] - 2 for i in range(2, len(fl))), list(zip(known, counts))
    # system + tools (+ the first user message): what no stage may touch, and what the window is sized to
    fixed = fl[0]["request"]["tokens_in"]
    assert 10_000 < fixed < SOFT // 2, fixed
    # (the CLI's own billing header in system changes between its requests; the rest never does)
    def system(b: dict) -> list:
        return [x for x in b["system"] if not str(x.get("text", "")).startswith("x-anthropic-billing-header")]

    assert all(b["tools"] == bodies[0]["tools"] and system(b) == system(bodies[0]) for b in bodies)
    stats = check_effects(fl, recs)
    # without the stages the last request would be far past the window's hard threshold; a request whose
    # compaction ran past its budget on a loaded machine goes out as the decided state, without that
    # new summary (it lands on the next request): still under the window
    assert fl[-1]["request"]["tokens_in"] > HARD > max(f["forward"]["tokens_out"] for f in fl if not f["forward"].get("fallback"))
    assert WINDOW > max(f["forward"]["tokens_out"] for f in fl)
    # the thinking blocks of the latest assistant turn came back as the stand-in signed them
    assert all(m["content"][0]["type"] == "thinking" for b in bodies[1:] for m in b["messages"][-3:]
               if m["role"] == "assistant")
    assert not small.proxy.leaks(API_KEY)
    print(f"\nclaude-code small window: fixed={fixed} tokens, {stats}, cli {elapsed:.1f}s, "
          f"tokens_in last={fl[-1]['request']['tokens_in']} sent max={max(f['forward']['tokens_out'] for f in fl)}, "
          f"messages known/sent {list(zip(known, counts))}")


# -- the SDKs: a scripted multi-turn conversation with tool calls ---------------------------------
# Each user turn pastes ~3.8K tokens of context (clearing cannot touch it) and asks for a tool: even
# turns run Bash (a ~4.6K-token output, cleared later), odd turns Write a whole file (a ~4.6K-token
# input, cleared later with clear_tool_inputs; its result is one line).

TURNS = 10
MODEL = "claude-opus-4-8"
BASH = {"name": "Bash", "description": "Run a shell command",
        "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}
WRITE = {"name": "Write", "description": "Write a file",
         "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}, "content": {"type": "string"}}}}


def pasted(turn: int, sentences: int = 180) -> str:
    """A user turn's long pasted context (not a tool result: clearing cannot touch it)."""
    return " ".join(f"Turn {turn} requirement {k}: the parser must accept input {k * 17 % 311} and report line {k}."
                    for k in range(sentences))


def tool_output(turn: int) -> str:
    return big_file(turn + 20, lines=220)


def _task_turn(text: str) -> int | None:
    m = re.match(r"Task (\d+):", text or "")
    return int(m.group(1)) if m else None


def sdk_turns(api: str, body: dict):
    """The stand-in's script for the SDK conversations: a user turn "Task N: ..." gets Bash on even N,
    a Write of a whole file on odd N; a tool result gets the default answer (quoting it)."""
    if api == "openai_responses":
        items = [it for it in body.get("input") or [] if isinstance(it, dict)]
        last = items[-1] if items else {}
        text = last.get("content") if last.get("role") == "user" else None
    else:
        msgs = body.get("messages") or []
        last = msgs[-1] if msgs else {}
        c = last.get("content")
        text = c if isinstance(c, str) else c[0].get("text") if isinstance(c, list) and c and c[0].get("type") == "text" else None
        if last.get("role") != "user":
            text = None
    turn = _task_turn(text) if isinstance(text, str) else None
    if turn is None:
        return None
    if turn % 2:
        return "", ("Write", {"file_path": f"src/gen_{turn}.py", "content": tool_output(turn)})
    return "", ("Bash", {"command": f"cat data_{turn}.txt"})


def tool_result_for(name: str, turn: int) -> str:
    return tool_output(turn) if name == "Bash" else f"File created successfully at: src/gen_{turn}.py"


def _sdk_check(route: Route, standin, since: int, path: str, key: str) -> dict:
    recs = standin.requests(path)
    accepted(recs)
    assert len(recs) == 2 * TURNS
    fl = flows(route.proxy, since, len(recs))
    stats = check_effects(fl, recs, key=key)
    inputs = [f["clearing"].get("inputs_cleared", 0) for f in fl if f["clearing"] and f["clearing"]["new"]]
    assert sum(inputs) > 0, "no Write input was cleared:\n" + table(fl)
    return {**stats, "inputs_cleared": sum(inputs)}


@pytest.fixture
def scripted(strict):
    strict.planner = sdk_turns
    return strict


def test_anthropic_sdk_small_window(small: Route, scripted):
    since = small.proxy.mark()
    client = small.anthropic()
    messages: list[dict] = []
    for turn in range(TURNS):
        messages.append({"role": "user", "content": f"Task {turn}: {pasted(turn)} Now run the tool."})
        r = client.messages.create(model=MODEL, max_tokens=256, messages=messages, tools=[BASH, WRITE])
        assert r.stop_reason == "tool_use"
        use = next(b for b in r.content if b.type == "tool_use")
        assert use.name == ("Write" if turn % 2 else "Bash")
        messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in r.content]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                   "content": tool_result_for(use.name, turn)}]}]
        r = client.messages.create(model=MODEL, max_tokens=256, messages=messages, tools=[BASH, WRITE])
        assert r.stop_reason == "end_turn" and r.content[-1].text.startswith("The tool returned: ")
        messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in r.content]})
    stats = _sdk_check(small, scripted, since, "/v1/messages", "messages")
    # what went upstream: old Write inputs are objects whose file body is a stub, the path kept
    last = scripted.requests("/v1/messages")[-1].json()["messages"]
    writes = [b["input"] for m in last if isinstance(m["content"], list) for b in m["content"]
              if b.get("type") == "tool_use" and b["name"] == "Write"]
    assert any(w["content"].startswith("[contextwarden cleared this input value") and w["file_path"].startswith("src/gen_")
               for w in writes), writes
    print(f"\nanthropic sdk small window: {stats}")


def test_openai_chat_small_window(small: Route, scripted):
    since = small.proxy.mark()
    client = small.openai()
    tools = [{"type": "function", "function": {"name": t["name"], "description": t["description"], "parameters": t["input_schema"]}}
             for t in (BASH, WRITE)]
    messages: list[dict] = [{"role": "system", "content": "You are a careful assistant."}]
    for turn in range(TURNS):
        messages.append({"role": "user", "content": f"Task {turn}: {pasted(turn)} Now run the tool."})
        r = client.chat.completions.create(model="gpt-4o", messages=messages, tools=tools)
        assert r.choices[0].finish_reason == "tool_calls"
        tc = r.choices[0].message.tool_calls[0]
        messages += [{"role": "assistant", "content": None, "tool_calls": [
                         {"id": tc.id, "type": "function", "function": {"name": tc.function.name, "arguments": tc.function.arguments}}]},
                     {"role": "tool", "tool_call_id": tc.id, "content": tool_result_for(tc.function.name, turn)}]
        r = client.chat.completions.create(model="gpt-4o", messages=messages, tools=tools)
        assert r.choices[0].finish_reason == "stop"
        messages.append({"role": "assistant", "content": r.choices[0].message.content})
    stats = _sdk_check(small, scripted, since, "/v1/chat/completions", "messages")
    last = scripted.requests("/v1/chat/completions")[-1].json()["messages"]
    args = [json.loads(tc["function"]["arguments"]) for m in last for tc in m.get("tool_calls") or []]
    assert all(isinstance(a, dict) for a in args)
    assert any(str(a.get("content", "")).startswith("[contextwarden cleared this input value") for a in args)
    print(f"\nopenai chat small window: {stats}")


def test_openai_responses_small_window(small: Route, scripted):
    since = small.proxy.mark()
    client = small.openai()
    tools = [{"type": "function", "name": t["name"], "description": t["description"], "parameters": t["input_schema"]}
             for t in (BASH, WRITE)]
    items: list = []
    for turn in range(TURNS):
        items.append({"role": "user", "content": f"Task {turn}: {pasted(turn)} Now run the tool."})
        r = client.responses.create(model="gpt-4o", input=items, tools=tools)
        fc = r.output[0]
        assert fc.type == "function_call"
        items += [{"type": "function_call", "call_id": fc.call_id, "name": fc.name, "arguments": fc.arguments},
                  {"type": "function_call_output", "call_id": fc.call_id, "output": tool_result_for(fc.name, turn)}]
        r = client.responses.create(model="gpt-4o", input=items, tools=tools)
        assert r.output_text.startswith("The tool returned: ")
        items.append({"role": "assistant", "content": r.output_text})
    stats = _sdk_check(small, scripted, since, "/v1/responses", "input")
    print(f"\nopenai responses small window: {stats}")
