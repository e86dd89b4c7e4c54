"""Token accounting: tiktoken counts, the per-content cache, the estimate fallback, calibration."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tiktoken

from contextwarden.core.events import EventBus
from contextwarden.models import ApiKind
from contextwarden.settings import load_settings
from contextwarden.store.state import StateStore
from contextwarden.store.statecache import state_cache
from contextwarden.wire.dialects import ANTHROPIC
from contextwarden.wire.streams.turn import Usage
from contextwarden.wire.tokens import FACTOR_MAX, MESSAGE_OVERHEAD, TokenCounter, encoding_name_for, strips_thinking
from tests.conftest import EVAL_DIR, SHARED

CC_TURN1 = EVAL_DIR / "requests" / "claude-code-2.1.197-turn1.json"
CC_TURN2 = EVAL_DIR / "requests" / "claude-code-2.1.197-turn2.json"


@pytest.fixture
def settings():
    return load_settings(None).tokens


@pytest.fixture
def counter(settings, tmp_path):
    bus = EventBus()
    state = StateStore(tmp_path / "state.sqlite")
    yield TokenCounter(settings, state, bus)
    state.close()


def events(counter, type):
    return [e for e in counter.bus.recent if e.type == type]


# ---------------------------------------------------------------------------- encodings


def test_counts_are_tiktokens_own(counter):
    text = "The quick brown fox jumps over the lazy dog. Ünïcödé, emoji 🦊 and code: def f(x): return x**2"
    assert counter.count_text(text) == len(tiktoken.get_encoding("cl100k_base").encode(text))
    assert counter.count_text(text, "gpt-4o-mini") == len(tiktoken.get_encoding("o200k_base").encode(text))
    assert counter.source.startswith("tiktoken cl100k_base")
    # the counter names the folder as it was given (TIKTOKEN_CACHE_DIR): ../shared may be a symlink
    cache = re.search(r"\(cache (.+)\)$", counter.source)
    assert cache and Path(cache.group(1)).resolve() == (SHARED / "tiktoken").resolve(), counter.source


def test_special_token_text_is_plain_text(counter):
    # a file that contains tiktoken's special-token text must be counted, not raise
    assert counter.count_text("before <|endoftext|> after") > 3


@pytest.mark.parametrize("model,enc", [
    ("gpt-4o", "o200k_base"), ("gpt-4o-mini-2024-07-18", "o200k_base"), ("gpt-4.1-nano", "o200k_base"),
    ("gpt-5", "o200k_base"), ("gpt-5.1-codex", "o200k_base"), ("o1", "o200k_base"), ("o3-mini", "o200k_base"),
    ("o4-mini", "o200k_base"), ("openai/gpt-4o", "o200k_base"), ("claude-sonnet-4-5", "cl100k_base"),
    ("llama3.1:8b", "cl100k_base"), ("olmo-7b", "cl100k_base"), (None, "cl100k_base"),
])
def test_encoding_for_model(model, enc):
    assert encoding_name_for(model, "cl100k_base") == enc


def test_configured_encoding_is_used_for_other_models(tmp_path):
    s = load_settings(None, overrides={"tokens": {"encoding": "o200k_base"}}).tokens
    c = TokenCounter(s)
    text = "contextwarden counts with the configured encoding ♜♞♝"
    assert c.count_text(text, "claude-opus-4") == len(tiktoken.get_encoding("o200k_base").encode(text))


_FALLBACK_SCRIPT = r"""
import json, sys
from contextwarden.core.events import EventBus
from contextwarden.settings import load_settings
from contextwarden.wire.tokens import TokenCounter
from contextwarden.models import ApiKind
bus = EventBus()
c = TokenCounter(load_settings(None).tokens, None, bus)
n1 = c.count_text("abcd" * 10)
n2 = c.count_request(ApiKind.ANTHROPIC, {"messages": [{"role": "user", "content": "x" * 400}]})
n3 = c.count_text("efgh" * 10)
print(json.dumps({"source": c.source, "n1": n1, "n2": n2, "n3": n3,
                  "errors": [e.data for e in bus.recent if e.type == "error"]}))
"""


def test_no_encoding_available_falls_back_to_a_reported_estimate(tmp_path):
    """No cache and no network (the download goes to a closed port): an estimate, said clearly, once."""
    empty = tmp_path / "tiktoken-empty"
    empty.mkdir()
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(empty), "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}
    out = subprocess.run([sys.executable, "-c", _FALLBACK_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["source"].startswith("estimate: 4 chars/token (tiktoken encoding cl100k_base unavailable: ")
    assert r["n1"] == 10 and r["n3"] == 10
    assert r["n2"] >= 100  # 400 chars / 4 plus framing
    assert len(r["errors"]) == 1 and r["errors"][0]["where"] == "tokens"
    assert "unavailable" in r["errors"][0]["message"]


def test_unknown_encoding_name_is_an_estimate_not_a_crash(tmp_path):
    s = load_settings(None, overrides={"tokens": {"encoding": "no_such_encoding"}}).tokens
    bus = EventBus()
    c = TokenCounter(s, None, bus)
    assert c.count_text("a" * 40, "claude-x") == 10
    assert c.count_text("a" * 40, "gpt-4o") == len(tiktoken.get_encoding("o200k_base").encode("a" * 40))
    assert "no_such_encoding unavailable" in c.source
    assert [e.data["where"] for e in bus.recent if e.type == "error"] == ["tokens"]


_LOADED_SCRIPT = r"""
import json, sys
from mitmproxy.test import taddons
from contextwarden.addons.warden import Warden
warden = Warden()
with taddons.context(warden) as tctx:
    tctx.configure(warden, cw_home=sys.argv[1], cw_profile="claude-code")
    tokens = warden.runtime.tokens
    out = {"start": sorted(tokens._encodings), "start_mb": tokens.loaded_mb}
    tokens.count_text("a Claude model's text", "claude-opus-4-6")
    out["claude_mb"] = tokens.loaded_mb
    tokens.count_text("an OpenAI model's text", "gpt-4o")
    out["openai"], out["openai_mb"] = sorted(tokens._encodings), tokens.loaded_mb
    warden.done()
print(json.dumps(out))
"""


def test_a_proxy_loads_its_profiles_tokenizer_at_start_and_another_at_its_models_first_request(tmp_path):
    """In a fresh interpreter, as a proxy starts: the claude-code profile's cl100k_base before the first
    request, o200k_base only once an OpenAI model's request is counted; what each load added to the
    process's RSS is counted (the engine does not take it for growth to start itself again for)."""
    out = subprocess.run([sys.executable, "-c", _LOADED_SCRIPT, str(tmp_path / "home")], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "CONTEXTWARDEN_MEMORY__ENABLED": "false"})
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["start"] == ["cl100k_base"] and r["start_mb"] > 20  # ~46 MB
    assert r["claude_mb"] == r["start_mb"]
    assert r["openai"] == ["cl100k_base", "o200k_base"] and r["openai_mb"] - r["start_mb"] > 30  # ~69 MB more


# ---------------------------------------------------------------------------- requests


def test_real_claude_code_request_is_counted_in_full(counter):
    body = json.loads(CC_TURN1.read_text())
    enc = tiktoken.get_encoding("cl100k_base")
    n = counter.count_request(ApiKind.ANTHROPIC, body)
    system_text = sum(len(enc.encode(b["text"])) for b in body["system"])
    tools = len(enc.encode(json.dumps(body["tools"], separators=(",", ":"), sort_keys=True, ensure_ascii=False)))
    # system + tools + messages: more than system and tools, and within framing of the plain-text sum
    assert n > system_text + tools
    msgs = sum(counter.count_message(ApiKind.ANTHROPIC, m) for m in body["messages"])
    assert 0 <= n - (system_text + tools + msgs) < 50


def test_request_is_the_sum_of_its_parts(counter):
    msgs = [{"role": "user", "content": "first question about the parser"},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                              {"type": "tool_use", "id": "t1", "name": "Read", "input": {"path": "a.py"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "print('hi')\n" * 50}]}]
    body = {"model": "claude-sonnet-4-5", "system": "You are terse.", "messages": msgs}
    base = counter.count_request(ApiKind.ANTHROPIC, body)
    extra = {"role": "assistant", "content": "The file prints hi fifty times."}
    more = counter.count_request(ApiKind.ANTHROPIC, {**body, "messages": msgs + [extra]})
    assert more - base == counter.count_message(ApiKind.ANTHROPIC, extra)
    assert counter.count_message(ApiKind.ANTHROPIC, extra) == MESSAGE_OVERHEAD + counter.count_text(extra["content"])
    with_tools = counter.count_request(ApiKind.ANTHROPIC, {**body, "tools": [{"name": "Read", "description": "Read a file",
                                                                             "input_schema": {"type": "object"}}]})
    assert with_tools > base


def test_history_seen_before_costs_only_the_new_messages(counter):
    body = json.loads(CC_TURN2.read_text())
    counter.count_request(ApiKind.ANTHROPIC, body)
    grown = copy.deepcopy(body)
    grown["messages"][-1]["content"][0].pop("cache_control")  # Claude Code moves the breakpoint on
    grown["messages"] += [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_2", "name": "Bash", "input": {"command": "cat app.py"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2", "content": "print('x')" * 300,
                                      "cache_control": {"type": "ephemeral"}}]},
    ]
    before = counter.cache_info()
    counter.count_request(ApiKind.ANTHROPIC, grown)
    after = counter.cache_info()
    # new: 2 messages + their 2 blocks + the long output's text + the message whose breakpoint moved
    # (that message's block is a cache hit: it is keyed without cache_control)
    assert after["misses"] - before["misses"] == 6
    assert after["hits"] - before["hits"] >= len(body["messages"]) - 1 + 2  # old messages, tools, system


def test_moving_a_breakpoint_does_not_change_the_count(counter):
    block = {"type": "tool_result", "tool_use_id": "x", "content": "data " * 400}
    with_bp = {"role": "user", "content": [{**block, "cache_control": {"type": "ephemeral"}}]}
    without = {"role": "user", "content": [block]}
    assert counter.count_message(ApiKind.ANTHROPIC, with_bp) == counter.count_message(ApiKind.ANTHROPIC, without)


def test_images_are_a_fixed_estimate_and_never_tokenised(counter, settings):
    data = "iVBORw0KGgo" + "A" * 400_000
    img = {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
                                       {"type": "text", "text": "what is this?"}]}
    n = counter.count_message(ApiKind.ANTHROPIC, img)
    assert settings.image_tokens <= n < settings.image_tokens + 20
    oa = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + data}}]}
    assert settings.image_tokens <= counter.count_message(ApiKind.OPENAI_CHAT, oa) < settings.image_tokens + 10
    ollama = {"role": "user", "content": "see", "images": [data, data]}
    assert counter.count_message(ApiKind.OLLAMA_CHAT, ollama) >= 2 * settings.image_tokens
    doc = {"role": "user", "content": [{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": data}}]}
    assert counter.count_message(ApiKind.ANTHROPIC, doc) < settings.image_tokens + 10


def test_openai_chat_counts_tool_calls_and_tools(counter):
    body = {"model": "gpt-4o", "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
            "messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Weather in Paris?"},
                         {"role": "assistant", "content": None, "tool_calls": [
                             {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
                         {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"}]}
    n = counter.count_request(ApiKind.OPENAI_CHAT, body)
    o200 = tiktoken.get_encoding("o200k_base")
    texts = ["Be brief.", "Weather in Paris?", "get_weather", '{"city":"Paris"}', "sunny, 21C"]
    assert n > sum(len(o200.encode(t)) for t in texts)
    no_tools = counter.count_request(ApiKind.OPENAI_CHAT, {**body, "tools": None})
    assert n > no_tools


def test_responses_counts_instructions_and_items(counter):
    body = {"model": "gpt-5", "instructions": "You are a coding agent. " * 20,
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "fix the bug"}]},
                      {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": '{"cmd":"ls"}'},
                      {"type": "function_call_output", "call_id": "c1", "output": "a.py\nb.py\n" * 30},
                      {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Thinking about files"}]}]}
    n = counter.count_request(ApiKind.OPENAI_RESPONSES, body)
    parts = sum(counter.count_message(ApiKind.OPENAI_RESPONSES, it) for it in body["input"])
    instr = counter.count_text(body["instructions"], "gpt-5")
    assert n >= parts + instr
    assert counter.count_request(ApiKind.OPENAI_RESPONSES, {"model": "gpt-5", "input": "hello there"}) > 2


def test_typed_models_count_like_their_json(counter):

    body = json.loads(CC_TURN2.read_text())
    typed = ANTHROPIC.parse(body)
    assert counter.count_request(ApiKind.ANTHROPIC, typed) == counter.count_request(ApiKind.ANTHROPIC, body)
    assert counter.count_message(ApiKind.ANTHROPIC, typed.messages[-1]) == counter.count_message(ApiKind.ANTHROPIC, body["messages"][-1])


def test_cache_is_bounded(tmp_path):
    s = load_settings(None, overrides={"tokens": {"cache_entries": 1000}}).tokens
    c = TokenCounter(s)
    for i in range(3000):
        c.count_message(ApiKind.ANTHROPIC, {"role": "user", "content": f"message number {i}"})
    assert c.cache_info()["entries"] == 1000


def test_concurrent_counting_agrees(counter):
    body = json.loads(CC_TURN2.read_text())
    expected = TokenCounter(counter.settings).count_request(ApiKind.ANTHROPIC, body)
    bodies = []
    for i in range(40):
        b = copy.deepcopy(body)
        b["messages"].append({"role": "assistant", "content": f"reply {i % 5}"})
        bodies.append(b)
    with ThreadPoolExecutor(8) as ex:
        got = list(ex.map(lambda b: counter.count_request(ApiKind.ANTHROPIC, b), bodies))
    extra = {i % 5: counter.count_message(ApiKind.ANTHROPIC, {"role": "assistant", "content": f"reply {i % 5}"}) for i in range(5)}
    assert got == [expected + extra[i % 5] for i in range(40)]


# ---------------------------------------------------------------------------- calibration


def test_calibration_learns_persists_and_reports(tmp_path, settings):
    path = tmp_path / "state.sqlite"
    state, bus = StateStore(path), EventBus()
    c = TokenCounter(settings, state, bus)
    assert c.factor("claude-opus-4") == 1.0
    f1 = c.observe_usage("claude-opus-4", 1000, Usage(input_tokens=10, cache_read_input_tokens=900, cache_creation_input_tokens=290))
    assert f1 == pytest.approx(1.2)
    f2 = c.observe_usage("claude-opus-4", 2000, Usage(input_tokens=2200, output_tokens=5))
    assert f2 == pytest.approx(0.8 * 1.2 + 0.2 * 1.1)
    assert c.calibrated("claude-opus-4", 1000) == round(1000 * f2)
    assert c.factor("gpt-4o") == 1.0  # per model
    ev = [e.data for e in bus.recent if e.type == "calibration"]
    assert [(e["model"], e["estimate"], e["provider"]) for e in ev] == [("claude-opus-4", 1000, 1200), ("claude-opus-4", 2000, 2200)]
    assert ev[-1]["factor"] == pytest.approx(f2, abs=1e-4) and ev[-1]["n"] == 2
    state.close()
    # a restart reads it back
    state2 = StateStore(path)
    c2 = TokenCounter(settings, state2, EventBus())
    assert c2.factor("claude-opus-4") == pytest.approx(f2)
    assert c2.calibration()["claude-opus-4"]["n"] == 2
    state2.close()


def test_calibration_ignores_nonsense_and_clamps(counter):
    assert counter.observe_usage("m", None, Usage(input_tokens=100)) is None
    assert counter.observe_usage("m", 0, Usage(input_tokens=100)) is None
    assert counter.observe_usage("m", 100, None) is None
    assert counter.observe_usage("m", 100, Usage()) is None
    # one absurd observation (a response for a different body) is reported but not learned
    assert counter.observe_usage("m", 100, Usage(input_tokens=10_000)) == 1.0
    assert events(counter, "calibration")[-1].data["applied"] is False
    for _ in range(50):
        counter.observe_usage("m", 100, Usage(input_tokens=390))
    assert counter.factor("m") == FACTOR_MAX


def test_calibration_off_leaves_factor_at_one(tmp_path):
    s = load_settings(None, overrides={"tokens": {"calibrate": False}}).tokens
    c = TokenCounter(s)
    assert c.observe_usage("m", 100, Usage(input_tokens=150)) is None
    assert c.factor("m") == 1.0 and c.calibrated("m", 100) == 100


def test_usage_total_input_shapes():
    assert Usage(input_tokens=3, cache_read_input_tokens=4, cache_creation_input_tokens=5).total_input == 12
    assert Usage(input_tokens=3, cache_read_input_tokens=4).total_input == 7
    assert Usage().total_input is None


def test_observer_turn_complete_calibrates_through_the_runtime(cw_home):
    """The Observer's turn job (the answer read off the loop, then the turn completed) hands the
    provider's usage to the runtime's counter."""
    from contextwarden.addons.observer import _read_and_complete
    from contextwarden.core.runtime import Runtime
    from contextwarden.request.context import Incoming
    from contextwarden.request.pipeline import count_tokens, prepare
    from contextwarden.wire.streams.tap import ResponseTap

    rt = Runtime(load_settings(None, cw_home, overrides={"memory": {"enabled": False}}), cw_home, log=False)
    try:
        raw = CC_TURN2.read_bytes()
        ctx = prepare(rt, Incoming(ApiKind.ANTHROPIC, "api.anthropic.com", "/v1/messages", [("content-type", "application/json")], raw, "f1"))
        ctx.tokens_in = ctx.tokens_out = count_tokens(ctx, ctx.original)
        usage = {"input_tokens": 5, "cache_read_input_tokens": ctx.tokens_in, "output_tokens": 1}
        events = [("message_start", {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant",
                                                                            "model": ctx.model, "content": [], "usage": usage}}),
                  ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}}),
                  ("message_stop", {"type": "message_stop"})]
        tap = ResponseTap(ApiKind.ANTHROPIC, "text/event-stream", None, None)
        for name, data in events:  # as the loop holds them: chunks, read when the job runs
            tap.feed(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        _read_and_complete(rt, ctx, "f1", {}, tap, None, True)
        cal = [e.data for e in rt.bus.recent if e.type == "calibration"]
        assert cal and cal[0]["estimate"] == ctx.tokens_in and cal[0]["provider"] == ctx.tokens_in + 5
        assert rt.tokens.calibration()[ctx.model]["n"] == 1
        state_cache(rt).flush()  # (written with the state put soon: within a second, or when the runtime closes)
        assert rt.state.get("calibration", ctx.model)["n"] == 1
        assert [e.type for e in rt.bus.recent if e.type in ("response", "turn")] == ["response", "turn"]
    finally:
        rt.close()


def test_earlier_turns_thinking_is_not_counted_where_the_provider_drops_it(counter):
    think = {"type": "thinking", "thinking": "deliberating at length " * 100, "signature": "sig"}
    msgs = [{"role": "user", "content": "first task"},
            {"role": "assistant", "content": [think, {"type": "text", "text": "done"}]},
            {"role": "user", "content": "second task"},
            {"role": "assistant", "content": [dict(think, signature="s2"), {"type": "tool_use", "id": "t", "name": "x", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "ok"}]}]
    t = counter.count_block(ApiKind.ANTHROPIC, think)
    keep = counter.count_request(ApiKind.ANTHROPIC, {"model": "claude-opus-4-8", "messages": msgs})
    drop = counter.count_request(ApiKind.ANTHROPIC, {"model": "claude-opus-4-20250514", "messages": msgs})
    assert keep - drop == t  # only the first turn's thinking goes; the current tool loop's stays
    assert counter.count_request(ApiKind.ANTHROPIC, {"messages": msgs}) == keep  # unknown model: kept


@pytest.mark.parametrize("model", ["claude-3-7-sonnet-20250219", "claude-opus-4-20250514", "claude-opus-4-1",
                                   "claude-sonnet-4-5-20250929", "claude-haiku-4-5", "claude-sonnet-4@20250514",
                                   "us.anthropic.claude-opus-4-1-20250805-v1:0"])
def test_the_families_whose_earlier_thinking_the_api_drops(model):
    assert strips_thinking(model)


@pytest.mark.parametrize("model", ["claude-opus-4-5-20251101", "claude-opus-4-8", "claude-sonnet-4-6", "claude-sonnet-5",
                                   "claude-haiku-5-5", "claude-fable-5", "claude-mythos-5-1", "claude-mythos-preview",
                                   "gpt-5", None])
def test_a_later_or_unknown_model_is_taken_to_keep_its_thinking(model):
    # (a new family the table does not name, as claude-fable-5 or claude-mythos-5, keeps it: counts err high)
    assert not strips_thinking(model)
