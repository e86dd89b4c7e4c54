"""The providers' own context management, in process: the one decision per request (the dialects'
``provider``), the validator's rule for Anthropic compaction blocks, the decided state keeping a taken-over
edit out, the stream assembler and the billing of the provider's compaction (shapes from the providers'
documentation: docs/provider-context-management.md). The same cases through mitmdump and the real SDKs:
tests/e2e/test_provider_cm.py."""

from __future__ import annotations

import copy

import pytest

from contextwarden import hookimpl
from contextwarden.core.liveprotocol import Totals
from contextwarden.core.runtime import Runtime
from contextwarden.models.base import ApiKind
from contextwarden.offline.replay import replay
from contextwarden.settings import load_settings
from contextwarden.store.bodies import record
from contextwarden.wire.cost import billed_from_usage, billed_units, boundaries, price_for, provider_compaction
from contextwarden.wire.dialects import ANTHROPIC, NO_PROVIDER, dialect, validate_rewrite
from contextwarden.wire.dialects import anthropic as anthropic_dialect
from contextwarden.wire.tokens import TokenCounter
from tests.support.stages import Harness, anthropic_tool_loop, settings_overrides

A, R = ApiKind.ANTHROPIC, ApiKind.OPENAI_RESPONSES
CLEAR = {"type": "clear_tool_uses_20250919", "trigger": {"type": "input_tokens", "value": 1000}}
THINK = {"type": "clear_thinking_20251015", "keep": "all"}
COMPACT = {"type": "compact_20260112", "trigger": {"type": "input_tokens", "value": 60000}}
BLOCK = {"type": "compaction", "content": "Summary so far.", "encrypted_content": "opaque"}


def decide(api, body, take=()):
    return dialect(api).provider_context(body, None, frozenset(take))


def test_the_table_of_cases_anthropic():
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": [BLOCK, {"type": "text", "text": "ok"}]},
            {"role": "user", "content": "b"}]
    assert decide(A, {"messages": msgs[:1]}) is NO_PROVIDER
    pc = decide(A, {"messages": msgs, "context_management": {"edits": [THINK, CLEAR, COMPACT]}})
    assert (pc.clearing_steps_back, pc.clears_thinking, pc.compaction_steps_back, pc.boundary, pc.update) == (True, True, True, 2, ())
    taken = decide(A, {"messages": msgs, "context_management": {"edits": [THINK, CLEAR, COMPACT]}}, ["clear_tool_uses"])
    assert not taken.clearing_steps_back and taken.compaction_steps_back and taken.taken == ("clear_tool_uses",)
    assert taken.update == (("context_management", {"edits": [THINK, COMPACT]}),)
    alone = decide(A, {"messages": msgs, "context_management": {"edits": [CLEAR]}}, ["clear_tool_uses", "compaction"])
    assert alone.update == (("context_management", None),)  # nothing left: the field goes
    # a compaction block without the edit: the stages work after it (no step back), never before
    assert decide(A, {"messages": msgs}) == NO_PROVIDER.__class__(boundary=2, dropped=1)


def test_the_table_of_cases_responses():
    items = [{"role": "user", "content": "a"}, {"type": "compaction", "id": "cmp_1", "encrypted_content": "gAAA"},
             {"role": "user", "content": "b"}]
    cm = [{"type": "compaction", "compact_threshold": 200000}]
    assert decide(R, {"input": items}).boundary == 2 and not decide(R, {"input": items}).compacts
    assert decide(R, {"input": items, "context_management": cm}).compaction_steps_back
    taken = decide(R, {"input": items, "context_management": cm}, ["compaction"])
    assert not taken.compacts and taken.update == (("context_management", None),)
    trig = decide(R, {"input": items + [{"type": "compaction_trigger"}], "context_management": cm}, ["compaction"])
    assert trig.compacts and trig.boundary == 2  # asked for now: never taken over; our work after the item combines


def test_the_boundary_is_looked_for_in_the_new_messages_only():
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": [BLOCK]}, {"role": "user", "content": "b"}]
    assert decide(A, {"messages": msgs}).boundary == 2
    # (n, index) the previous request found in its first n messages: taken as it is, the rest looked at
    assert dialect(A).provider_context({"messages": msgs}, (2, 0)).boundary == 0
    assert dialect(A).provider_context({"messages": msgs + msgs}, (3, 2)).boundary == 5


def test_a_repeat_that_moves_the_breakpoint_looks_at_its_new_messages_only(tmp_path, monkeypatch):
    """Claude Code rewrites its previous last message (the cache breakpoint moves to the newest): the
    next request looks for the compaction block in that message and the new ones, not the whole history."""
    looked: list[int] = []
    holds = anthropic_dialect._holds_compaction
    monkeypatch.setattr(anthropic_dialect, "_holds_compaction", lambda m: looked.append(1) or holds(m))
    h = Harness(tmp_path, overrides=settings_overrides(window=200_000, stages=["strip"]))
    try:
        body = anthropic_tool_loop(4, result_words=20, thinking=False, session="pcm-repeat")
        body["messages"][4]["content"].insert(0, dict(BLOCK))
        body["messages"][-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
        assert h.send(A, copy.deepcopy(body)).ctx.notes["provider"].boundary == 5
        for i in range(3):
            last = copy.deepcopy(body["messages"][-1])
            del last["content"][-1]["cache_control"]
            new = [{"role": "assistant", "content": [{"type": "text", "text": f"done {i}"}]},
                   {"role": "user", "content": [{"type": "text", "text": f"next {i}", "cache_control": {"type": "ephemeral"}}]}]
            body = {**body, "messages": body["messages"][:-1] + [last] + new}
            looked.clear()
            assert h.send(A, copy.deepcopy(body)).ctx.notes["provider"].boundary == 5
            assert len(looked) <= 3 < len(body["messages"])
    finally:
        h.close()


def test_the_validator_keeps_a_compaction_block_and_what_precedes_it():
    body = anthropic_tool_loop(3, result_words=50)
    body["messages"][3]["content"].insert(0, dict(BLOCK))
    fixed = decide(A, body).boundary
    assert fixed == 4 and validate_rewrite(A, copy.deepcopy(body), body, fixed=fixed) == []
    for edit in (lambda m: m[3]["content"][0].update(content="Edited."),  # the block changed
                 lambda m: m[2]["content"][0].update(content="stub")):  # a message the provider drops, changed
        bad = copy.deepcopy(body)
        edit(bad["messages"])
        assert any("compaction" in p for p in validate_rewrite(A, bad, body, fixed=fixed))


class Failing:
    """A stage that raises: the request goes as the decided state."""

    @hookimpl
    def cw_request(self, ctx) -> None:
        raise RuntimeError("on purpose")


def test_the_decided_state_keeps_a_taken_over_edit_out(tmp_path):
    overrides = settings_overrides(window=200_000, stages=["clearing", "failing"],
                                   clearing={"trigger_tokens": 1000, "keep_recent": 1, "clear_at_least": 100},
                                   pipeline={"provider_take_over": ["clear_tool_uses"]})
    overrides["pipeline"]["order"] = ["clearing", "failing"]
    rt = Runtime(load_settings("default", tmp_path, overrides=overrides), tmp_path, profile="default", log=False,
                 extra_plugins=[("failing", Failing())])
    h = Harness.__new__(Harness)
    h.rt = rt
    try:
        body = anthropic_tool_loop(4, result_words=300, thinking=False)
        body["context_management"] = {"edits": [THINK, CLEAR]}
        sent = h.send(A, body)
        assert sent.outcome.fallback == "decided"
        assert sent.body["context_management"] == {"edits": [THINK]}
    finally:
        rt.close()


def test_delegated_clearing_steps_back_in_process(tmp_path):
    h = Harness(tmp_path, overrides=settings_overrides(window=200_000, stages=["clearing"],
                                                       clearing={"trigger_tokens": 1000, "keep_recent": 1, "clear_at_least": 100}))
    try:
        body = anthropic_tool_loop(4, result_words=300, session="pcm-a")
        mine = h.send(A, copy.deepcopy(body))
        assert mine.changed and mine.ctx.notes["clearing"]["freed"] > 0
        body = anthropic_tool_loop(4, result_words=300, seed=7, session="pcm-b")  # (results of its own: no records)
        body["context_management"] = {"edits": [CLEAR]}
        theirs = h.send(A, copy.deepcopy(body))
        assert not theirs.changed and theirs.body == body
    finally:
        h.close()


def sse(*events: dict) -> list[tuple[str, dict]]:
    return [(e["type"], e) for e in events]


def test_the_assembler_reads_compaction_blocks_iterations_and_applied_edits():
    its = [{"type": "compaction", "input_tokens": 180000, "output_tokens": 3500, "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0},
           {"type": "message", "input_tokens": 23000, "output_tokens": 1000, "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0}]
    a = ANTHROPIC.new_assembler()
    for name, data in sse(
            {"type": "message_start", "message": {"id": "msg_1", "model": "claude-sonnet-4-6", "content": [],
                                                  "usage": {"input_tokens": 23000, "output_tokens": 1}}},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "compaction", "content": None}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "compaction_delta", "content": "Summary.",
                                                                  "encrypted_content": "opaque"}},
            {"type": "content_block_stop", "index": 0},
            {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi."}},
            {"type": "content_block_stop", "index": 1},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
             "usage": {"input_tokens": 23000, "output_tokens": 1000, "iterations": its},
             "context_management": {"applied_edits": [{"type": "clear_tool_uses_20250919", "cleared_tool_uses": 3,
                                                       "cleared_input_tokens": 4200}]}},
            {"type": "message_stop"}):
        a.event(name, data)
    turn = a.build()
    assert turn.message["content"][0] == {"type": "compaction", "content": "Summary.", "encrypted_content": "opaque"}
    u = turn.usage.to_dict()
    assert u["iterations"] == its and u["provider_cleared_tokens"] == 4200
    # billed on top of the top-level fields, which leave the compaction out
    assert provider_compaction(u)["input_tokens"] == 180000
    assert billed_units(u) == pytest.approx(23000 + 180000)
    assert billed_from_usage(u, price_for("claude-sonnet-4-6")).cost == pytest.approx(((23000 + 180000) * 3 + (1000 + 3500) * 15) / 1e6)


def test_replay_bills_only_what_the_provider_keeps(tmp_path):
    """What precedes the latest compaction block is dropped by the API: neither side of a replay is billed
    for it, so a saving there is nobody's."""
    counter = TokenCounter(load_settings("claude-code", tmp_path).tokens)
    body = anthropic_tool_loop(3, result_words=300)
    tail = boundaries(body, counter)[-1].cum
    body["messages"][5]["content"].insert(0, dict(BLOCK))
    kept = boundaries(body, counter)[-1].cum
    body["messages"][2]["content"][0]["content"] = "x"  # a result before the block, cleared: billed the same
    assert 0 < kept < tail - 500 and boundaries(body, counter)[-1].cum == kept


def test_tokens_in_leave_out_what_the_provider_drops(tmp_path):
    """The messages before Anthropic's latest compaction block are dropped by the API: not counted as
    the request's tokens (the stages' triggers read them), the block's own message still is."""
    h = Harness(tmp_path, overrides=settings_overrides(window=200_000, stages=["strip"]))
    try:
        body = anthropic_tool_loop(4, result_words=300, thinking=False, session="pcm-count")
        whole = h.send(A, copy.deepcopy(body)).ctx.tokens_in
        body["messages"][13]["content"].insert(0, dict(BLOCK))
        sent = h.send(A, copy.deepcopy(body))
        tail = {**body, "messages": body["messages"][13:]}
        assert sent.ctx.notes["provider"].dropped == 13
        assert sent.ctx.tokens_in == h.rt.tokens.count_request(A, tail) < whole / 2
    finally:
        h.close()


def test_thinking_kept_by_a_keep_all_edit_is_counted_and_billed(tmp_path):
    """Claude Code sends ``clear_thinking_20251015`` with ``keep: "all"``: a model that drops earlier turns'
    thinking by default keeps it then, so the count and the replayed bill include it."""
    h = Harness(tmp_path, overrides=settings_overrides(window=200_000, stages=["strip"]))
    try:
        body = anthropic_tool_loop(4, result_words=100, session="pcm-think")  # claude-sonnet-4-5: drops it by default
        dropped = h.send(A, copy.deepcopy(body)).ctx.tokens_in
        kept_body = {**body, "context_management": {"edits": [THINK]}}
        kept = h.send(A, copy.deepcopy(kept_body)).ctx.tokens_in
        assert kept == h.rt.tokens.count_request(A, {**body, "model": "claude-opus-4-6"}) > dropped
        assert boundaries(kept_body, h.rt.tokens)[-1].cum > boundaries(body, h.rt.tokens)[-1].cum
    finally:
        h.close()


def test_a_rewrite_that_folds_kept_thinking_counts_only_what_it_sends(tmp_path):
    """What a keep-all edit keeps is added back to a rewrite's count from the rewrite itself: after
    compaction folded earlier turns with their thinking, ``tokens_out`` is what the sent body holds (it was
    the original's thinking on top, and a rewrite near the window went as the session's decided state)."""
    ov = settings_overrides(window=4_000, stages=["compaction"],
                            compaction={"protect_recent_turns": 1, "min_span_tokens": 50, "soft_threshold": 0.3, "hard_threshold": 0.4})
    h = Harness(tmp_path / "h", overrides=ov)
    fresh = Harness(tmp_path / "fresh", overrides=settings_overrides(window=200_000, stages=["strip"]))
    try:
        body = {**anthropic_tool_loop(6, result_words=100, session="pcm-fold"), "context_management": {"edits": [THINK]}}
        sent = h.send(A, copy.deepcopy(body))
        assert any(e.get("applied") for e in sent.events("compaction")) and sent.outcome.reason == "rewritten"
        assert sent.ctx.tokens_out == fresh.send(A, copy.deepcopy(sent.body)).ctx.tokens_in < sent.ctx.tokens_in
    finally:
        h.close()
        fresh.close()


def test_replay_counts_what_a_keep_all_rewrite_sends(tmp_path):
    """A recorded keep-all body replayed through a compaction that folds turns with their thinking: the
    request's tokens sent are what the sent body holds, counted as the provider reads it."""
    home = tmp_path / "cwhome"
    body = {**anthropic_tool_loop(6, result_words=100, session="r2"), "context_management": {"edits": [THINK]}}
    record(home, {"flow_id": "f0", "session": "s2", "ts": 1000.0, "api": "anthropic", "path": "/v1/messages",
                  "model": body["model"], "headers": [["content-type", "application/json"]], "original": body, "rewritten": None})
    sent: list[dict] = []
    rep = replay(home / "bodies" / "s2", turn_hooks=False, window=4_000,
                 overrides={"compaction": {"protect_recent_turns": 1, "min_span_tokens": 50, "soft_threshold": 0.3,
                                           "hard_threshold": 0.4}, "memory": {"enabled": False}},
                 before_close=lambda rt, _: sent.append(rt.bodies.get("replay-00000")["rewritten"]))  # (the first request's flow)
    assert [r.outcome for r in rep.results] == ["rewritten"] and sent[0]
    fresh = Harness(tmp_path / "fresh", overrides=settings_overrides(window=200_000, stages=["strip"]))
    try:
        assert rep.results[0].tokens_sent == fresh.send(A, sent[0]).ctx.tokens_in < rep.results[0].tokens_original
    finally:
        fresh.close()


def test_the_overview_bills_the_provider_compaction_and_prices_savings_without_it():
    """The Overview's totals: the provider's compaction billed (and counted apart), the proxy's saving
    priced at the rate of the request's own sampling, not inflated by the compaction's."""
    top = {"input_tokens": 20000, "output_tokens": 500, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    comp = {"type": "compaction", "input_tokens": 150000, "output_tokens": 3000, "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0}
    turn = {"type": "turn", "data": {"model": "claude-sonnet-4-6", "tokens_in": 30000, "tokens_sent": 20000,
                                     "usage": {**top, "iterations": [comp, {"type": "message", **top}],
                                               "provider_cleared_tokens": 700}}}
    plain = {"type": "turn", "data": {**turn["data"], "usage": top}}
    with_comp, without = Totals(), Totals()
    with_comp.add(turn)
    without.add(plain)
    assert with_comp.billed_units == without.billed_units + 150000
    assert (with_comp.provider_compactions, with_comp.provider_compaction_units, with_comp.provider_cleared) == (1, 150000, 700)
    assert with_comp.est_saved_units == pytest.approx(without.est_saved_units) == pytest.approx(10000)
    assert with_comp.usd == pytest.approx(without.usd + (150000 * 3 + 3000 * 15) / 1e6)
    assert with_comp.est_saved_usd == pytest.approx(without.est_saved_usd)


def test_clearing_leaves_what_precedes_a_new_compaction_block_as_it_came(tmp_path):
    """Results cleared before the provider compacted are not stubbed again in the messages its compaction
    block now holds or drops (the validator would refuse the rewrite, the request going as the original
    after an error): clearing works after the block, its earlier work resumes there."""
    h = Harness(tmp_path, overrides=settings_overrides(window=200_000, stages=["clearing"],
                                                       clearing={"trigger_tokens": 1000, "keep_recent": 1, "clear_at_least": 100}))
    try:
        body = anthropic_tool_loop(4, result_words=300, thinking=False, session="pcm-after")
        first = h.send(A, copy.deepcopy(body))
        assert first.changed and first.ctx.notes["clearing"]["freed"] > 0
        later = copy.deepcopy(body)  # the provider compacted at the end of turn 2; two more turns follow
        later["messages"][7]["content"].insert(0, dict(BLOCK))
        more = anthropic_tool_loop(2, result_words=300, thinking=False, seed=9, session="pcm-after")["messages"]
        later["messages"][-1:] = [{"role": "user", "content": "go on"}, {"role": "assistant", "content": "ok"}] + more
        for _ in range(2):  # the second resumes the first's step 1
            sent = h.send(A, copy.deepcopy(later))
            assert sent.outcome.fallback is None and not sent.events("error"), sent.outcome
            assert sent.body["messages"][:8] == later["messages"][:8]
            assert sent.changed and sent.ctx.notes["clearing"]["freed"] > 0  # after the block: cleared
    finally:
        h.close()


def test_strip_rewrites_no_message_before_the_provider_compaction(tmp_path):
    h = Harness(tmp_path, overrides=settings_overrides(window=200_000, stages=["strip"], strip={"rewrite_outgoing": True}))
    try:
        env = "[vc:user]hello there[/vc:user]"
        msgs = [{"role": "user", "content": env}, {"role": "assistant", "content": [BLOCK]}, {"role": "user", "content": env}]
        sent = h.send(A, {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": copy.deepcopy(msgs)})
        assert sent.outcome.fallback is None and sent.body["messages"][:2] == msgs[:2]
        assert sent.body["messages"][2]["content"] != env  # after the block: cleaned
    finally:
        h.close()


def test_replay_counts_no_saving_for_what_the_provider_dropped_or_cleared(tmp_path):
    """Recorded bodies that delegated tool clearing, and one that carries a compaction block: replayed, the
    stages step back (no rewrite, no saving of ours) and both sides count what the provider reads."""
    home = tmp_path / "cwhome"
    cleared = anthropic_tool_loop(4, result_words=300, thinking=False, session="r1")
    cleared["context_management"] = {"edits": [CLEAR]}
    compacted = anthropic_tool_loop(4, result_words=300, thinking=False, seed=5, session="r1")
    compacted["messages"][13]["content"].insert(0, dict(BLOCK))
    for i, body in enumerate((cleared, compacted)):
        record(home, {"flow_id": f"f{i}", "session": "s1", "ts": 1000.0 + i, "api": "anthropic", "path": "/v1/messages",
                      "model": body["model"], "headers": [["content-type", "application/json"]], "original": body,
                      "rewritten": None})
    rep = replay(home / "bodies" / "s1", turn_hooks=False,
                 overrides={"clearing": {"trigger_tokens": 1000, "keep_recent": 1, "clear_at_least": 100},
                            "memory": {"enabled": False}})
    assert [r.outcome for r in rep.results] == ["unchanged", "unchanged"]
    assert [r.tokens_sent for r in rep.results] == [r.tokens_original for r in rep.results]
    assert rep.results[1].tokens_sent < rep.results[0].tokens_sent / 2  # (the dropped messages: nobody's)
