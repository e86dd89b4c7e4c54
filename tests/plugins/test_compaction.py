"""The ``compaction`` stage through the real pipeline: thresholds, cut rules, cache stability, cost model."""

from __future__ import annotations

import copy
import threading
import time

import orjson
import pytest

from contextwarden.compress.summarise import extract, extractive_summary, render
from contextwarden.models.base import ApiKind
from contextwarden.plugins import compaction as comp
from contextwarden.store.statecache import state_cache
from contextwarden.wire.conversation import count_breakpoints, cut_points
from contextwarden.wire.dialects import ANTHROPIC, validate_rewrite
from tests.support.stages import Harness, anthropic_tool_loop, chat_tool_loop, responses_tool_loop, settings_overrides

SUMMARY_HEAD = "[contextwarden: summary of the "
CONTEXT = ("<system-reminder>\nAs you answer the user's questions, you can use the following context:\n# claudeMd\n"
           "Contents of /repo/CLAUDE.md (project instructions):\n\n- Run `make lint` before every commit.\n"
           "# currentDate\nToday's date is 2026-11-27.\n</system-reminder>")


def harness(home, window: int, clearing: bool = False, **compaction) -> Harness:
    # the thresholds these tests place their bodies against (0.55, 0.78, 0.9 of the window), pinned
    # here rather than taken from the default profile, whose thresholds may move
    cfg = {"protect_recent_turns": 2, "min_span_tokens": 500,
           "soft_threshold": 0.70, "hard_threshold": 0.85, "target": 0.40}
    cfg.update(compaction)
    return Harness(home, overrides=settings_overrides(window=window, stages=["strip", "clearing", "compaction"],
                                                      compaction=cfg, clearing={"enabled": clearing}))


def tokens_of(h: Harness, api: ApiKind, body: dict) -> int:
    return h.rt.tokens.count_request(api, body)


def window_for(h: Harness, api: ApiKind, body: dict, fraction: float) -> int:
    """A context window of which ``body`` uses ``fraction``."""
    return int(tokens_of(h, api, body) / fraction)


def summary_text(msg: dict) -> str:
    c = msg["content"]
    return c if isinstance(c, str) else c[0]["text"]


def prefix(body: dict, key: str = "messages") -> bytes:
    """What the provider caches before the first kept message: system, tools, and the summary."""
    return orjson.dumps([body.get("system"), body.get("tools"), body[key][0]])


def test_below_the_soft_threshold_nothing_changes(cw_home):
    body = anthropic_tool_loop(8)
    h = harness(cw_home, 10**7)
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert not sent.changed and sent.events("compaction") == []
    h.close()


def test_hard_threshold_compacts_old_turns_into_one_summary(cw_home):
    body = anthropic_tool_loop(10)
    original = copy.deepcopy(body)
    h = harness(cw_home, 1000)
    h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, body, 0.9)}})
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert sent.changed, sent.outcome.reason
    assert sent.ctx.original == original
    out = sent.body["messages"]
    # one summary, as a user message, then an assistant message; system and tools untouched
    assert out[0]["role"] == "user" and summary_text(out[0]).startswith(SUMMARY_HEAD)
    assert out[1]["role"] == "assistant"
    assert sum(1 for m in out if isinstance(m["content"], list) and any(
        b.get("type") == "text" and b.get("text", "").startswith(SUMMARY_HEAD) for b in m["content"])) == 1
    assert sent.body["system"] == original["system"] and sent.body["tools"] == original["tools"]
    # the kept messages are the original's tail, verbatim; the last 2 user turns are among them
    kept = len(out) - 1
    assert out[1:] == original["messages"][-kept:]
    user_turns = [i for i, m in enumerate(original["messages"]) if m["role"] == "user" and any(b.get("type") == "text" for b in m["content"])]
    assert len(original["messages"]) - kept <= user_turns[-2]
    # the summary carries the requests, files, commands and memory ids of what it replaced
    text = summary_text(out[0])
    assert "Task 0: please fix the bug in src/mod0.py" in text
    assert "src/mod0_0.py (Read)" in text and "`pytest tests/test_0.py -x`" in text
    assert "→ m-" in text
    # event and notes
    (ev,) = [e for e in sent.events("compaction") if e.get("applied")]
    assert ev["reused"] is False and ev["trigger"] == "hard" and ev["messages"] == len(original["messages"]) - kept
    assert ev["tokens_after"] < ev["tokens_before"] * 0.7 and ev["summary_tokens"] > 0
    assert sent.ctx.notes["compaction"]["end"] == len(original["messages"]) - kept
    assert {c["tool"] for c in sent.ctx.notes["compacted"]} == {"Read", "Bash"}
    assert sent.ctx.tokens_out < sent.ctx.tokens_in * 0.7
    assert validate_rewrite(ApiKind.ANTHROPIC, sent.body, original) == []
    h.close()


def test_compacted_prefix_is_byte_identical_across_requests_and_restarts(cw_home):
    bodies = [anthropic_tool_loop(n) for n in (10, 11, 12)]
    h = harness(cw_home, 1000)
    h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, bodies[0], 0.9)}})
    sent = [h.send(ApiKind.ANTHROPIC, b) for b in bodies]
    assert all(s.changed for s in sent), [s.outcome.reason for s in sent]
    evs = [[e for e in s.events("compaction") if e.get("applied")][0] for s in sent]
    assert [e["reused"] for e in evs] == [False, True, True]
    p0 = prefix(sent[0].body)
    assert prefix(sent[1].body) == p0 and prefix(sent[2].body) == p0
    # everything after the summary is the client's own messages
    end = sent[0].ctx.notes["compaction"]["end"]
    for s, b in zip(sent, bodies):
        assert s.body["messages"][1:] == b["messages"][end:]
    # a restart: a new Runtime on the same cw_home gives the same bytes
    h.restart()
    again = h.send(ApiKind.ANTHROPIC, bodies[2])
    assert orjson.dumps(again.body) == orjson.dumps(sent[2].body)
    assert [e for e in again.events("compaction") if e.get("applied")][0]["reused"] is True
    h.close()


def test_growing_past_the_hard_threshold_again_extends_the_summary(cw_home):
    h = harness(cw_home, 1000)
    first = anthropic_tool_loop(10)
    h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, first, 0.9)}})
    s1 = h.send(ApiKind.ANTHROPIC, first)
    later = anthropic_tool_loop(22)
    s2 = h.send(ApiKind.ANTHROPIC, later)
    ev = [e for e in s2.events("compaction") if e.get("applied")][0]
    assert ev["reused"] is False and ev["trigger"] == "hard"
    t1, t2 = summary_text(s1.body["messages"][0]), summary_text(s2.body["messages"][0])
    assert t1 != t2
    assert "Task 0: please fix" in t2  # the first request is kept from the earlier summary
    assert s2.ctx.notes["compaction"]["end"] > s1.ctx.notes["compaction"]["end"]
    assert validate_rewrite(ApiKind.ANTHROPIC, s2.body, later) == []
    h.close()


@pytest.mark.parametrize("cold", [{"last": time.time() - 3600}, {"model": "claude-opus-4-20250514"}], ids=["expired", "model switch"])
def test_soft_threshold_waits_on_a_warm_cache_and_compacts_a_cold_one(cw_home, cold):
    body = anthropic_tool_loop(10)
    h = harness(cw_home, 1000)
    h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, body, 0.78)}})
    small = anthropic_tool_loop(3)
    h.send(ApiKind.ANTHROPIC, small)  # the session's previous request, just now: the cache is warm
    warm = h.send(ApiKind.ANTHROPIC, body)
    assert not warm.changed
    (ev,) = warm.events("compaction")
    assert ev["applied"] is False and ev["warm"] is True and ev["keep_cost"] < ev["compact_cost"]
    # the same request after the cache expired (or, parametrised, right after a request to another
    # model, whose cache holds nothing of this one's): re-writing is paid anyway, so compaction pays
    key = comp.session_key(warm.ctx)
    seen = state_cache(h.rt).get(comp.NS_SEEN, key)
    assert seen["model"] == warm.ctx.model
    state_cache(h.rt).put(comp.NS_SEEN, key, {**seen, **cold})
    cold = h.send(ApiKind.ANTHROPIC, body)
    assert cold.changed
    ev = [e for e in cold.events("compaction") if e.get("applied")][0]
    assert ev["trigger"] == "soft" and ev["warm"] is False and ev["compact_cost"] < ev["keep_cost"]
    h.close()


@pytest.mark.parametrize("factor", [0.8, 1.0])
def test_a_free_moment_compacts_from_the_soft_threshold_times_cold_soft_factor(cw_home, factor):
    """A body at 0.63 of the window, under the soft threshold (0.70): on a warm cache it goes as it came; after
    the cache expired (the prompt is written again anyway) it is compacted when ``cold_soft_factor`` brings the
    threshold under it (0.8: 0.56), and not at 1.0."""
    body = anthropic_tool_loop(10)
    h = harness(cw_home, 1000, cold_soft_factor=factor)
    h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, body, 0.63)}})
    h.send(ApiKind.ANTHROPIC, anthropic_tool_loop(3))  # the session's previous request, just now
    warm = h.send(ApiKind.ANTHROPIC, body)
    assert not warm.changed and warm.events("compaction") == []
    key = comp.session_key(warm.ctx)
    seen = state_cache(h.rt).get(comp.NS_SEEN, key)
    state_cache(h.rt).put(comp.NS_SEEN, key, {**seen, "last": time.time() - 3600})
    cold = h.send(ApiKind.ANTHROPIC, body)
    assert cold.changed is (factor < 1)
    applied = [e for e in cold.events("compaction") if e.get("applied")]
    if factor < 1:
        (ev,) = applied
        assert ev["trigger"] == "soft" and ev["warm"] is False and ev["tokens_after"] < ev["tokens_before"]
        assert tokens_of(h, ApiKind.ANTHROPIC, cold.body) < 0.56 * h.rt.settings.tokens.context_window
    else:
        assert applied == []
    h.close()


def test_a_free_moments_small_clearing_step_does_not_keep_its_compaction_from_being_taken(cw_home):
    """At a free moment clearing may take a step under ``clear_at_least`` (the Bash results, here): that
    brings the body under the free moment's compaction threshold, which still counts those tokens, so the
    big step that costs nothing extra now is taken (not a warm compaction's full write some requests later)."""
    body = anthropic_tool_loop(10)
    h = Harness(cw_home, overrides=settings_overrides(
        window=1000, stages=["strip", "clearing", "compaction"],
        compaction={"protect_recent_turns": 2, "min_span_tokens": 500, "soft_threshold": 0.70, "hard_threshold": 0.85,
                    "target": 0.40, "cold_soft_factor": 0.8},
        clearing={"enabled": True, "trigger_tokens": 1_000, "clear_at_least": 10_000_000, "keep_recent": 2,
                  "keep_edited_reads": 0, "working_set_tokens": 0, "stale_after": {"Bash": 2}}))
    window = window_for(h, ApiKind.ANTHROPIC, body, 0.63)
    h.apply({"tokens": {"context_window": window}})
    h.send(ApiKind.ANTHROPIC, anthropic_tool_loop(3))  # the session's previous request, just now
    warm = h.send(ApiKind.ANTHROPIC, body)
    assert not warm.changed and warm.events("compaction") == []
    key = comp.session_key(warm.ctx)
    store = state_cache(h.rt)
    store.put(comp.NS_SEEN, key, {**store.get(comp.NS_SEEN, key), "last": time.time() - 3600})
    cold = h.send(ApiKind.ANTHROPIC, body)
    notes = cold.ctx.notes["clearing"]
    assert notes["freed_free"] == notes["freed"] > 0
    assert tokens_of(h, ApiKind.ANTHROPIC, body) - notes["freed"] < 0.56 * window  # cleared, under the threshold
    (ev,) = [e for e in cold.events("compaction") if e.get("applied")]
    assert ev["trigger"] == "soft" and ev["warm"] is False
    h.close()


@pytest.mark.parametrize("cold_protect", [None, 3])
def test_a_free_moments_compaction_keeps_cold_protect_turns(cw_home, cold_protect):
    """At a free moment the fold may go deeper than ``protect_recent_turns`` allows elsewhere: it keeps the last
    ``cold_protect_turns`` turns (None: as many as ever), since the write it makes is paid anyway."""
    body = anthropic_tool_loop(10)
    h = harness(cw_home, 1000, protect_recent_turns=6, target=0.10, cold_soft_factor=0.8, cold_protect_turns=cold_protect)
    h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, body, 0.63)}})
    h.send(ApiKind.ANTHROPIC, anthropic_tool_loop(3))  # the session's previous request, just now
    key = comp.session_key(h.send(ApiKind.ANTHROPIC, anthropic_tool_loop(4)).ctx)
    seen = state_cache(h.rt).get(comp.NS_SEEN, key)
    state_cache(h.rt).put(comp.NS_SEEN, key, {**seen, "last": time.time() - 3600})
    cold = h.send(ApiKind.ANTHROPIC, body)
    (ev,) = [e for e in cold.events("compaction") if e.get("applied")]
    assert ev["warm"] is False
    msgs = cold.body["messages"]
    assert summary_text(msgs[0]).startswith(SUMMARY_HEAD)
    tasks = [m for m in msgs[1:] if m["role"] == "user" and "Task " in str(m["content"])]
    assert len(tasks) == (cold_protect or 6) - 1  # the turns kept whole, and the final message's
    h.close()


@pytest.mark.parametrize("thinking", [True, False])
def test_a_new_turn_dropping_thinking_past_the_lookback_is_a_cold_prefix(cw_home, thinking):
    """A model before Opus 4.5 drops earlier turns' thinking when a new user message arrives: when the
    previous turn's first thinking block is more than the provider's 20-block lookback before the end,
    only the system prompt's cache entry is found and the whole conversation is written again, so
    compaction at the soft threshold costs nothing extra, as after an idle gap. Without thinking the
    cache is warm and the soft threshold waits."""
    body = anthropic_tool_loop(6, result_words=300, tools_per_turn=12, thinking=thinking)
    h = harness(cw_home, 1000)
    h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, body, 0.78)}})
    h.send(ApiKind.ANTHROPIC, anthropic_tool_loop(2, thinking=thinking))  # the session's previous request, just now
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert sent.changed is thinking
    ev = [e for e in sent.events("compaction") if "warm" in e][0]
    assert ev["warm"] is not thinking and ev["applied"] is thinking
    h.close()


def test_cost_model():
    # a warm prefix read 0.1x: compacting 75% -> 40% of the window pays only over enough requests
    assert not comp.pays_off(150_000, 80_000, 10_000, n=2, warm=True).pays
    assert comp.pays_off(150_000, 80_000, 10_000, n=30, warm=True).pays
    # a cold prefix is written anyway: the smaller one is always cheaper
    assert comp.pays_off(150_000, 80_000, 10_000, n=1, warm=False).pays
    c = comp.pays_off(100, 50, 0, n=1, warm=True)
    assert c.keep == pytest.approx(10.0) and c.compact == pytest.approx(62.5)


@pytest.mark.parametrize("level,expect", [("NORMAL", False), ("REDUCED", False), ("MINIMAL", True)])
def test_budget_levels_lower_the_thresholds(cw_home, level, expect):
    body = anthropic_tool_loop(10)
    h = harness(cw_home, 1000)
    # 0.55 of the window: under NORMAL soft (0.70) and REDUCED hard (0.68), over MINIMAL hard (0.51)
    h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, body, 0.55)}})
    h.send(ApiKind.ANTHROPIC, anthropic_tool_loop(2))  # warm cache: only the hard threshold compacts
    sent = h.send(ApiKind.ANTHROPIC, body, notes={"level": level})
    assert sent.changed is expect
    h.close()


def test_latest_assistant_turn_and_its_thinking_are_kept(cw_home):
    body = anthropic_tool_loop(10)
    # the last user message answers a tool call: the latest assistant turn is a tool loop
    body["messages"].pop()
    body["messages"].append({"role": "assistant", "content": [
        {"type": "thinking", "thinking": "one more look", "signature": "sig-last"},
        {"type": "tool_use", "id": "toolu_last", "name": "Read", "input": {"file_path": "x.py"}}]})
    body["messages"].append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_last", "content": "print(1)"}]})
    h = harness(cw_home, 1000, protect_recent_turns=1)
    h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, body, 0.95)}})
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert sent.changed, sent.outcome.reason
    out = sent.body["messages"]
    # the whole turn from "Task 9" on is kept, thinking blocks and signatures verbatim
    i = next(i for i, m in enumerate(body["messages"]) if m["role"] == "user" and "Task 9" in str(m["content"]))
    assert out[-(len(body["messages"]) - i):] == body["messages"][i:]
    h.close()


def test_role_system_messages_in_the_span_are_quoted_verbatim(cw_home):
    """Whole, however long (Claude Code's list of agent types runs to ~6K characters; they were cut at 2,000)."""
    body = anthropic_tool_loop(10)
    note = "Available agent types for the Agent tool:\n" + "\n".join(f"- agent{k}: does task {k} (Tools: *)" for k in range(200))
    body["messages"].insert(1, {"role": "system", "content": note})  # user, system, assistant (as Claude Code)
    later = "The user switched to plan mode."
    body["messages"].insert(len(body["messages"]) - 1, {"role": "system", "content": later})
    h = harness(cw_home, 1000)
    h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, body, 0.9)}})
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert sent.changed, sent.outcome.reason
    text = summary_text(sent.body["messages"][0])
    assert f"system messages (verbatim):\n{note}" in text
    assert {"role": "system", "content": later} in sent.body["messages"]  # kept where it was
    h.close()


def test_a_summary_longer_than_its_span_is_not_applied(cw_home):
    """Claude Code's first tool-loop step past the hard threshold (a small window): the only span outside the
    latest turn is the person's message and the list of agents after it, which a summary quotes verbatim,
    so folding it would send more, not less."""
    body = anthropic_tool_loop(1)
    note = "Available agent types for the Agent tool:\n" + "\n".join(f"- agent{k}: does task {k} (Tools: *)" for k in range(200))
    body["messages"] = body["messages"][:3]  # the person's message, the tool calls, their results
    body["messages"].insert(1, {"role": "system", "content": note})
    original = copy.deepcopy(body)
    h = harness(cw_home, 1000)
    h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, body, 0.9)}})
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert not [e for e in sent.events("compaction") if e.get("applied")]
    assert [e["reason"] for e in sent.events("compaction")] == ["the summary is not smaller than the span it folds"]
    assert sent.body == original and "folded" not in sent.ctx.notes
    assert (state_cache(h.rt).get(comp.NS, comp.session_key(sent.ctx)) or {}).get("decisions") is None  # nothing stored
    h.close()


def test_breakpoints_move_to_the_summary_and_never_exceed_four(cw_home):
    body = anthropic_tool_loop(10)
    # system has 1 breakpoint, the last message 1; put 2 on old messages (4 in total)
    body["messages"][2]["content"][0]["cache_control"] = {"type": "ephemeral"}
    body["messages"][5]["content"][-1]["cache_control"] = {"type": "ephemeral"}
    assert count_breakpoints(body) == 4
    h = harness(cw_home, 1000)
    h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, body, 0.9)}})
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert sent.changed, sent.outcome.reason
    assert sent.body["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert count_breakpoints(sent.body) == 3
    # a client already using 4 breakpoints outside the span gets no extra one
    full = anthropic_tool_loop(10, session="full")
    full["tools"][-1]["cache_control"] = {"type": "ephemeral"}
    full["messages"][-2]["content"][0]["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
    assert count_breakpoints(full) == 4
    s2 = h.send(ApiKind.ANTHROPIC, full)
    assert s2.changed and "cache_control" not in s2.body["messages"][0]["content"][0]
    assert count_breakpoints(s2.body) == 4
    h.close()


def test_summary_breakpoint_uses_1h_when_a_later_one_does(cw_home):
    body = anthropic_tool_loop(10)
    body["messages"][-1]["content"][0]["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
    body["system"][-1]["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
    h = harness(cw_home, 1000)
    h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, body, 0.9)}})
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert sent.body["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    h.close()


def test_openai_chat_summary_follows_the_system_message(cw_home):
    body = chat_tool_loop(12)
    original = copy.deepcopy(body)
    h = harness(cw_home, 1000)
    h.apply({"tokens": {"context_window": window_for(h, ApiKind.OPENAI_CHAT, body, 0.9)}})
    sent = h.send(ApiKind.OPENAI_CHAT, body)
    assert sent.changed, sent.outcome.reason
    out = sent.body["messages"]
    assert out[0] == original["messages"][0]  # the system prompt
    assert out[1]["role"] == "user" and out[1]["content"].startswith(SUMMARY_HEAD)
    assert out[2]["role"] == "assistant"
    assert out[2:] == original["messages"][-(len(out) - 2):]
    s2 = h.send(ApiKind.OPENAI_CHAT, chat_tool_loop(13))
    assert s2.body["messages"][1] == out[1]
    h.close()


def test_ollama_summary_is_a_plain_string(cw_home):
    body = chat_tool_loop(12)
    body["model"] = "llama3.1"
    h = harness(cw_home, 1000)
    h.apply({"tokens": {"context_window": window_for(h, ApiKind.OLLAMA_CHAT, body, 0.9)}})
    sent = h.send(ApiKind.OLLAMA_CHAT, body)
    assert sent.changed and isinstance(sent.body["messages"][1]["content"], str)
    h.close()


def test_responses_input_items(cw_home):
    body = responses_tool_loop(14)
    original = copy.deepcopy(body)
    h = harness(cw_home, 1000)
    h.apply({"tokens": {"context_window": window_for(h, ApiKind.OPENAI_RESPONSES, body, 0.9)}})
    sent = h.send(ApiKind.OPENAI_RESPONSES, body)
    assert sent.changed, sent.outcome.reason
    assert sent.ctx.original == original
    out = sent.body["input"]
    assert out[0] == original["input"][0] and out[1]["role"] == "user" and out[1]["content"].startswith(SUMMARY_HEAD)
    # an assistant group (reasoning + call, or a message) is cut at its start
    assert out[2].get("type") == "reasoning" or out[2].get("role") == "assistant"
    i = len(original["input"]) - (len(out) - 2)
    assert out[2:] == original["input"][i:] and original["input"][i - 1].get("type") != "reasoning"
    assert sent.body["instructions"] == original["instructions"]
    # previous_response_id: the server holds the history, nothing to compact
    body2 = {**copy.deepcopy(body), "previous_response_id": "resp_1"}
    assert not h.send(ApiKind.OPENAI_RESPONSES, body2).changed
    h.close()


def test_codex_agents_md_and_environment_are_carried_whole(cw_home):
    """Codex sends its AGENTS.md and environment once, as the first user input: a compaction that folds them
    carries both verbatim (not as requests cut to a line)."""
    agents = "# AGENTS.md instructions for /repo\n\n<INSTRUCTIONS>\n" + "\n".join(
        f"- service {k}: run `just check-{k}` before committing" for k in range(30)) + "\n</INSTRUCTIONS>"
    env = "<environment_context>\n  <cwd>/repo</cwd>\n  <shell>bash</shell>\n</environment_context>"
    body = responses_tool_loop(14)
    body["input"].insert(1, {"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": agents}, {"type": "input_text", "text": env}]})
    h = harness(cw_home, 1000)
    h.apply({"tokens": {"context_window": window_for(h, ApiKind.OPENAI_RESPONSES, body, 0.9)}})
    sent = h.send(ApiKind.OPENAI_RESPONSES, body)
    assert sent.changed, sent.outcome.reason
    text = sent.body["input"][1]["content"]
    assert text.startswith(SUMMARY_HEAD) and text.count(agents) == 1 and text.count(env) == 1
    assert "INSTRUCTIONS" not in text.split("User requests:\n", 1)[1]
    h.close()


def test_clearing_then_compaction_together(cw_home):
    body = anthropic_tool_loop(12)
    h = harness(cw_home, 1000, clearing=True)
    total = tokens_of(h, ApiKind.ANTHROPIC, body)
    # clearing takes ~10% off; what is left is still past the hard threshold
    h.apply({"tokens": {"context_window": total},
             "clearing": {"trigger_tokens": int(total * 0.9), "clear_at_least": 1000, "keep_recent": 2}})
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert sent.changed, sent.outcome.reason
    assert sent.events("clearing") and [e for e in sent.events("compaction") if e.get("applied")]
    # compaction's arithmetic counted what clearing freed
    ev = [e for e in sent.events("compaction") if e.get("applied")][0]
    assert ev["tokens_before"] == sent.ctx.tokens_in - sent.events("clearing")[0]["tokens_freed"]
    assert validate_rewrite(ApiKind.ANTHROPIC, sent.body, body) == []
    h.close()


def test_extractive_summary_is_deterministic_and_bounded(cw_home):
    body = anthropic_tool_loop(30)
    turns = ANTHROPIC.transcript(body["messages"][:-1])
    a = extractive_summary(turns, messages=10, tokens=1000, max_chars=4000)
    b = extractive_summary(ANTHROPIC.transcript(copy.deepcopy(body)["messages"][:-1]), messages=10, tokens=1000, max_chars=4000)
    assert a.text == b.text and len(a.text) <= 4400
    assert "Task 0: please fix" in a.text and "Task 29: please fix" in a.text  # the task and the latest request
    assert "earlier items omitted" in a.text
    # merging with a prior summary keeps its items
    c = extractive_summary(ANTHROPIC.transcript(anthropic_tool_loop(2, seed=5)["messages"]), messages=4, tokens=100,
                           max_chars=20_000, prior=a)
    assert c.messages == 14 and "Task 0: please fix" in c.text
    # errors are picked from tool results
    sec = extract(ANTHROPIC.transcript([
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "make"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                                      "content": "make: *** No rule to make target 'all'.  Stop."}]}]))
    assert sec["errors"] == ["Bash: make: *** No rule to make target 'all'. Stop."]
    assert render(sec, 2, 10, 2000).count("Commands run:\n- `make`") == 1


def test_cut_points_never_split_a_pair():
    body = anthropic_tool_loop(4)
    es = ANTHROPIC.entries(body["messages"])
    cuts = cut_points(es, 0, len(es))
    # a cut goes right before an assistant message, never between a tool_use and its result
    for k in cuts:
        assert body["messages"][k]["role"] == "assistant"
        prev = body["messages"][k - 1]
        assert not any(b.get("type") == "tool_use" for b in prev["content"] if isinstance(prev["content"], list))
    assert cuts == [1, 3, 5, 7, 9, 11, 13, 15]


def test_llm_summariser_uses_the_clients_credentials_in_the_background(cw_home):
    from tests.support.upstream import StandIn

    with StandIn(text="The user fixed src/mod0.py through src/mod9.py; tests pass.") as up:
        body = anthropic_tool_loop(10)
        h = harness(cw_home, 1000, summariser="llm", llm_base_url=up.url, llm_model="claude-haiku-4-5")
        h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, body, 0.78)}})
        # soft threshold, cold cache: it pays, but waits for the LLM summary, started in the background
        first = h.send(ApiKind.ANTHROPIC, body)
        assert not first.changed
        assert [e for e in first.events("compaction")][0]["reason"] == "waiting for the llm summary"
        comp.wait_for_summaries(h.rt, 30)
        (rec,) = up.requests("/v1/messages")
        assert rec.header("x-api-key") == "sk-test-secret"
        # the stored summary counts what it covers (a later compaction extends it with these counts)
        ((_, done),) = h.rt.state.items(comp.NS_LLM)
        assert done["messages"] > 0 and done["source_tokens"] > 0
        assert rec.json()["model"] == "claude-haiku-4-5"
        # the conversation grows past the hard threshold: the span the summary was made for is used
        second = h.send(ApiKind.ANTHROPIC, anthropic_tool_loop(12))
        assert second.changed, second.outcome.reason
        text = summary_text(second.body["messages"][0])
        assert "compacted by claude-haiku-4-5" in text and "tests pass." in text
        assert len(up.requests("/v1/messages")) == 1  # no second summary call
        ev = [e for e in second.events("compaction") if e.get("applied")][0]
        assert ev["summariser"] == "llm" and ev["llm_usage"]["input_tokens"] > 0 and ev["llm_usage"]["output_tokens"] > 0
        assert b"sk-test-secret" not in orjson.dumps([e.to_dict() for e in h.rt.bus.recent], default=str)
        h.close()


def test_an_llm_summary_carries_the_clients_standing_context(cw_home):
    """The LLM's transcript leaves the client's reminders out, so the summary it writes is given the standing
    context verbatim in front of it; a later offline extension keeps both."""
    from tests.support.upstream import StandIn

    def with_context(body: dict) -> dict:
        m = body["messages"][0]
        body["messages"][0] = {"role": "user", "content": [{"type": "text", "text": CONTEXT}, *m["content"]]}
        return body

    with StandIn(text="The user fixed src/mod0.py through src/mod9.py; tests pass.") as up:
        body = with_context(anthropic_tool_loop(10))
        h = harness(cw_home, 1000, summariser="llm", llm_base_url=up.url, llm_model="claude-haiku-4-5")
        h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, body, 0.78)}})
        assert not h.send(ApiKind.ANTHROPIC, body).changed  # waiting for the LLM summary
        comp.wait_for_summaries(h.rt, 30)
        assert "claudeMd" not in up.requests("/v1/messages")[0].body.decode()
        second = h.send(ApiKind.ANTHROPIC, with_context(anthropic_tool_loop(12)))
        assert second.changed, second.outcome.reason
        text = summary_text(second.body["messages"][0])
        assert "compacted by claude-haiku-4-5" in text and "tests pass." in text and text.count(CONTEXT) == 1
        # grown past hard again, the LLM summary is extended offline (no second call): both still there
        h.apply({"compaction": {"summariser": "extractive"}})
        third = h.send(ApiKind.ANTHROPIC, with_context(anthropic_tool_loop(24)))
        ev = [e for e in third.events("compaction") if e.get("applied")][0]
        assert ev["reused"] is False and ev["summariser"] == "extractive", ev
        text = summary_text(third.body["messages"][0])
        assert "tests pass." in text and text.count(CONTEXT) == 1, text[:600]
        h.close()


@pytest.mark.parametrize("model,prices", [("claude-haiku-4-5", (1.0, 5.0)), ("claude-opus-4-8", (5.0, 25.0)),
                                          ("some-local-model", None)])
def test_the_llm_summary_cost_in_dollars_is_in_the_events(cw_home, model, prices):
    """The summariser's call is answered by a real local upstream with usage; the compaction event that
    applies the summary (and the summariser's own event) say its tokens and its price in USD: tokens x
    the model's list prices ($ per million), or None for a model the price table does not know."""
    from tests.support.upstream import StandIn

    with StandIn(text="Summary: the user fixed src/mod0.py through src/mod9.py; every test passes now. " * 8) as up:
        h = harness(cw_home, 1000, summariser="llm", llm_base_url=up.url, llm_model=model)
        h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, anthropic_tool_loop(10), 0.78)}})
        h.send(ApiKind.ANTHROPIC, anthropic_tool_loop(10))
        comp.wait_for_summaries(h.rt, 30)
        (rec,) = up.requests("/v1/messages")
        assert rec.status == 200
        usage = orjson.loads(bytes(rec.response_body))["usage"]  # what the upstream billed
        tin, tout = usage["input_tokens"], usage["output_tokens"]
        assert tin > 1000 and tout > 50
        done = [e.data for e in h.rt.bus.recent if e.type == "summariser" and e.data.get("status") == "done"]
        second = h.send(ApiKind.ANTHROPIC, anthropic_tool_loop(12))
        assert second.changed, second.outcome.reason
        ev = [e for e in second.events("compaction") if e.get("applied")][0]
        for data in (ev, done[0]):
            assert data["summariser_model"] == model
            assert (data["summariser_input_tokens"], data["summariser_output_tokens"]) == (tin, tout)
            if prices is None:
                assert data["summariser_usd"] is None
            else:
                assert data["summariser_usd"] == pytest.approx((tin * prices[0] + tout * prices[1]) / 1e6, rel=1e-6)
                assert data["summariser_usd"] > 0
        h.close()


def test_one_long_autonomous_turn_is_compacted_inside_past_hard(cw_home):
    """A single user request followed by a long tool loop: no older turn exists, so past the hard
    threshold the cut goes inside the turn, the request is quoted verbatim and the latest assistant
    message stays as it is; the next step of the loop reuses the decision."""
    loop = anthropic_tool_loop(1, result_words=600, tools_per_turn=1)
    msgs = loop["messages"][:3]  # the request, the first call and its result
    request = msgs[0]["content"][0]["text"]
    msgs[0] = {"role": "user", "content": [{"type": "text", "text": CONTEXT}, *msgs[0]["content"]]}
    for r in range(1, 14):
        msgs.append({"role": "assistant", "content": [
            {"type": "thinking", "thinking": f"step {r}", "signature": f"sig-{r}"},
            {"type": "tool_use", "id": f"toolu_r{r}", "name": "Read", "input": {"file_path": f"src/part{r}.py"}}]})
        msgs.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_r{r}",
                                                  "content": f"part {r}\n" + " ".join(f"w{r}x{i}" for i in range(600))}]})
    body = {**loop, "messages": msgs}
    h = harness(cw_home, 1000)
    h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, body, 0.9)}})
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert sent.changed, sent.outcome.reason
    out = sent.body["messages"]
    text = summary_text(out[0])
    assert text.rstrip().endswith(request)  # quoted verbatim, last
    assert "The user's current request (verbatim" in text
    assert text.count(CONTEXT) == 1  # the client's context, carried once (not again in the request)
    assert out[-2:] == msgs[-2:]  # the latest assistant message (thinking, signature) and its result
    assert validate_rewrite(ApiKind.ANTHROPIC, sent.body, body) == []
    # the loop goes on: the decision is reused byte for byte
    more = {**body, "messages": msgs + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_z", "name": "Read", "input": {"file_path": "z.py"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_z", "content": "print('z')"}]}]}
    again = h.send(ApiKind.ANTHROPIC, more)
    assert again.body["messages"][0] == out[0]
    assert [e for e in again.events("compaction") if e.get("applied")][0]["reused"] is True
    h.close()


def test_protection_never_covers_every_turn(cw_home):
    """Past soft, a conversation of fewer turns than ``protect_recent_turns`` (a long first turn, or the
    client's own summary and the work after it) has its first turn compacted rather than held until the
    hard threshold; every later turn stays verbatim. A single turn is not cut below hard."""
    body = anthropic_tool_loop(3)  # 4 user turns: three tasks and the last message
    msgs = body["messages"]
    second = [i for i, m in enumerate(msgs) if m["role"] == "user" and m["content"][0]["type"] == "text"][1]
    h = harness(cw_home, 1000, protect_recent_turns=6)
    h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, body, 0.78)}})
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert sent.changed, sent.outcome.reason
    (ev,) = sent.events("compaction")
    assert ev["trigger"] == "soft" and 0 < ev["messages"] < second
    out = sent.body["messages"]
    assert summary_text(out[0]).startswith(SUMMARY_HEAD) and out[1:] == msgs[ev["messages"]:]
    assert validate_rewrite(ApiKind.ANTHROPIC, sent.body, body) == []
    one = {**body, "messages": msgs[:3], "metadata": {"user_id": "user_x_account_y_session_sess-2"}}  # a tool loop's step
    h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, one, 0.78)}})
    alone = h.send(ApiKind.ANTHROPIC, one)
    assert not alone.changed and [e["reason"] for e in alone.events("compaction")] == [
        "nothing worth compacting outside the protected turns"]
    h.close()


def test_the_clients_standing_context_is_carried_whole(cw_home):
    """The first user message holds the client's context (Claude Code's reminder with the CLAUDE.md files, sent
    once): a compaction that folds it carries it verbatim, not as a request cut to a line nor dropped."""
    claude_md = "\n".join(f"- rule {k}: run `make lint-{k}` before every commit in services/api{k}" for k in range(40))
    reminder = ("<system-reminder>\nAs you answer the user's questions, you can use the following context:\n"
                f"# claudeMd\nContents of /repo/CLAUDE.md (project instructions):\n\n{claude_md}\n# currentDate\n"
                "Today's date is 2026-11-27.\n</system-reminder>")
    body = anthropic_tool_loop(3)
    msgs = body["messages"]
    msgs[0] = {"role": "user", "content": [{"type": "text", "text": reminder}, *msgs[0]["content"]]}
    h = harness(cw_home, 1000, protect_recent_turns=6)
    h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, body, 0.78)}})
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert sent.changed, sent.outcome.reason
    text = summary_text(sent.body["messages"][0])
    assert text.count(reminder) == 1
    requests = text.split("User requests:\n", 1)[1].split("\n\n", 1)[0]
    assert "Task 0: please fix the bug in src/mod0.py" in requests and "claudeMd" not in requests
    h.close()


def test_a_rewound_conversation_reuses_only_a_cut_that_keeps_its_latest_assistant_message(cw_home):
    body = anthropic_tool_loop(10)
    h = harness(cw_home, 1000)
    h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, body, 0.9)}})
    first = h.send(ApiKind.ANTHROPIC, body)
    end = first.ctx.notes["compaction"]["end"]
    # rewound to just after the first kept assistant message: the cut still keeps it, so it is reused
    short = {**body, "messages": body["messages"][: end + 2]}
    s1 = h.send(ApiKind.ANTHROPIC, short)
    assert s1.body["messages"][0] == first.body["messages"][0] and s1.body["messages"][1:] == short["messages"][end:]
    assert validate_rewrite(ApiKind.ANTHROPIC, s1.body, short) == []
    # rewound to before the cut: the span is not there any more; nothing is compacted (below the thresholds)
    shorter = {**body, "messages": body["messages"][:end]}
    assert shorter["messages"][-1]["role"] == "user"
    s2 = h.send(ApiKind.ANTHROPIC, shorter)
    assert not s2.changed and not [e for e in s2.events("compaction") if e.get("applied")]
    h.close()


def test_one_runtimes_shutdown_leaves_anothers_summaries_running(cw_home):
    """The background summariser belongs to its runtime: closing one runtime cancels nothing of another's."""
    a, b = harness(cw_home / "a", 1000), harness(cw_home / "b", 1000)
    go, ran = threading.Event(), []
    mine = comp.summariser(b.rt)
    assert mine is not comp.summariser(a.rt)
    assert mine.submit("first", lambda: go.wait(30))
    assert mine.submit("second", lambda: ran.append("second"))  # queued behind the first
    assert not mine.submit("second", lambda: ran.append("again"))  # one job per key at a time
    a.close()
    go.set()
    comp.wait_for_summaries(b.rt, 30)
    assert ran == ["second"]
    b.close()


def test_a_decision_stored_by_an_earlier_version_is_reused_byte_for_byte(cw_home):
    """Stored decisions are typed records (comp.Decision) written with the same JSON keys as before: a
    record as an earlier version wrote it (no folds, sections, created or trigger) still applies."""
    bodies = [anthropic_tool_loop(n) for n in (10, 11)]
    h = harness(cw_home, 1000)
    h.apply({"tokens": {"context_window": window_for(h, ApiKind.ANTHROPIC, bodies[0], 0.9)}})
    first = h.send(ApiKind.ANTHROPIC, bodies[0])
    assert first.changed, first.outcome.reason
    ((key, rec),) = h.rt.state.items(comp.NS)
    (stored,) = rec["decisions"]
    assert set(stored) == set(comp.Decision.__dataclass_fields__)
    old = {k: v for k, v in stored.items() if k not in ("folds", "sections", "created", "trigger")}
    h.rt.state.put(comp.NS, key, {"decisions": [old]})
    h.restart()
    again = h.send(ApiKind.ANTHROPIC, bodies[1])
    assert [e for e in again.events("compaction") if e.get("applied")][0]["reused"] is True
    assert prefix(again.body) == prefix(first.body)
    assert comp.Decision.load(old).dump() == {**old, "folds": [], "sections": {}, "created": 0.0, "trigger": None}
    h.close()
