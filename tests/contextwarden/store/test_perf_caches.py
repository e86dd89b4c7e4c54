"""The per-message caches of the request path give the same answers as computing from scratch, the
body ring keeps bytes, and the garbage-collector tuning does what it says."""

from __future__ import annotations

import copy
import gc

import orjson
import pytest

from contextwarden.models.base import ApiKind
from contextwarden.plugins import clearing
from contextwarden.settings import load_settings
from contextwarden.store.bodies import BodyRing, record
from contextwarden.wire.dialects import validate_rewrite
from contextwarden.wire.tokens import TokenCounter
from tests.support.stages import Harness, anthropic_tool_loop, chat_tool_loop, responses_tool_loop, settings_overrides


@pytest.fixture
def counter(tmp_path):
    return TokenCounter(load_settings("claude-code", tmp_path).tokens)


def _rewrites(body: dict) -> list[dict]:
    """Rewrites of an Anthropic body like the stages make, valid and invalid."""
    msgs = body["messages"]
    out = []
    cleared = copy.deepcopy(body)  # clearing: a few old results become stubs
    for m in cleared["messages"][2:10:3]:
        for b in m["content"]:
            if b.get("type") == "tool_result":
                b["content"] = "[cleared]"
    out.append(cleared)
    compacted = dict(body)  # compaction: a span replaced by one summary message
    compacted["messages"] = [{"role": "user", "content": [{"type": "text", "text": "summary"}]}] + msgs[8:]
    out.append(compacted)
    injected = dict(body)  # memory: a block added to the last message
    last = dict(msgs[-1])
    last["content"] = list(last["content"]) + [{"type": "text", "text": "recalled"}]
    injected["messages"] = msgs[:-1] + [last]
    out.append(injected)
    broken = dict(body)  # an orphan tool_result, an empty text block, a dropped tool_result
    broken["messages"] = msgs[:1] + msgs[2:]
    out.append(broken)
    blank = copy.deepcopy(body)
    blank["messages"][4]["content"].append({"type": "text", "text": "  "})
    out.append(blank)
    many = copy.deepcopy(body)  # too many breakpoints
    for m in many["messages"][:5]:
        m["content"][0]["cache_control"] = {"type": "ephemeral"}
    out.append(many)
    return out


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "claude-3-7-sonnet"])  # keeps / drops old thinking
def test_token_counts_with_raw_keys_and_reuse_equal_a_fresh_count(tmp_path, counter, model):
    body = anthropic_tool_loop(6, result_words=300)
    body["model"] = model
    raw = [orjson.dumps(m) for m in body["messages"]]
    keep: list = []
    n = counter.count_request(ApiKind.ANTHROPIC, body, keep=keep, raw=raw)
    fresh = TokenCounter(load_settings("claude-code", tmp_path).tokens)
    assert n == fresh.count_request(ApiKind.ANTHROPIC, body)
    for new in _rewrites(body):
        expect = TokenCounter(load_settings("claude-code", tmp_path).tokens).count_request(ApiKind.ANTHROPIC, new)
        assert counter.count_request(ApiKind.ANTHROPIC, new, reuse=keep[0]) == expect


@pytest.mark.parametrize("make,api", [(chat_tool_loop, ApiKind.OPENAI_CHAT), (responses_tool_loop, ApiKind.OPENAI_RESPONSES)])
def test_token_counts_of_other_apis_with_raw_keys(tmp_path, counter, make, api):
    body = make(4, result_words=200)
    key = "input" if api is ApiKind.OPENAI_RESPONSES else "messages"
    raw = [orjson.dumps(m) for m in body[key]]
    fresh = TokenCounter(load_settings("claude-code", tmp_path).tokens)
    assert counter.count_request(api, body, raw=raw) == fresh.count_request(api, body)
    assert counter.count_request(api, body, raw=raw) == fresh.count_request(api, body)  # cached


def test_validation_with_cached_facts_equals_validation_from_scratch():
    from contextwarden.wire import validate as v

    body = orjson.loads(orjson.dumps(anthropic_tool_loop(8, result_words=50)))
    raw = [orjson.dumps(m) for m in body["messages"]]
    for new in _rewrites(body):
        facts = v.FactCache()  # (a runtime's: runtime.memo("validate.facts", FactCache))
        cold = validate_rewrite(ApiKind.ANTHROPIC, new, body)
        warm = validate_rewrite(ApiKind.ANTHROPIC, new, body, original_raw=raw, facts=facts)
        assert len(facts) > 0
        again = validate_rewrite(ApiKind.ANTHROPIC, new, body, original_raw=raw, facts=facts)
        assert cold == warm == again
    assert any(validate_rewrite(ApiKind.ANTHROPIC, new, body) for new in _rewrites(body))  # the broken ones are caught
    assert not validate_rewrite(ApiKind.ANTHROPIC, _rewrites(body)[0], body, original_raw=raw)


def test_body_ring_keeps_bytes_and_returns_json(tmp_path):
    ring = BodyRing(max_bytes=1000)
    ring.put("a", {"flow_id": "a", "session": "s", "original": b'{"messages":[1]}', "rewritten": None}, 16)
    ring.put("b", {"flow_id": "b", "session": "s", "original": {"messages": []}, "rewritten": b'{"x":1}'}, 10)
    assert ring.get("a")["original"] == {"messages": [1]} and ring.get("a")["rewritten"] is None
    assert ring.get("b")["original"] == {"messages": []} and ring.get("b")["rewritten"] == {"x": 1}
    assert [e["flow_id"] for e in ring.for_session("s")] == ["a", "b"]
    assert isinstance(ring._lru.peek("a")["original"], bytes)  # stored as bytes: nothing for the GC to walk
    p = record(tmp_path, {"flow_id": "c", "session": "s", "original": b'{"m":2}', "rewritten": b'{"m":3}'})
    assert orjson.loads(p.read_bytes())["rewritten"] == {"m": 3}


def test_the_pipeline_remembers_bodies_as_bytes(tmp_path):
    h = Harness(tmp_path, profile="claude-code", overrides=settings_overrides(stages=["clearing"], clearing={"trigger_tokens": 100, "clear_at_least": 10, "keep_recent": 1}))
    try:
        body = anthropic_tool_loop(4, result_words=300)
        sent = h.send(ApiKind.ANTHROPIC, body)
        assert sent.changed
        kept = h.rt.bodies._lru.peek(sent.ctx.flow_id)
        assert isinstance(kept["original"], bytes) and isinstance(kept["rewritten"], bytes)
        got = h.rt.bodies.get(sent.ctx.flow_id)
        assert got["original"] == body and got["rewritten"] == sent.body
        t = sent.ctx.timings
        assert {"parse", "stages", "dump", "validate", "count_out", "serialise"} <= set(t)
    finally:
        h.close()


def test_forgetting_the_conversations_packs_the_bodies_it_keeps(tmp_path):
    """issue 41: the engine's RSS after idle held the inspector's bodies (the ring's 64 MB) whole and the
    recent events' JSON; once idle the bodies are kept compressed (read back as they were), the JSON goes."""
    h = Harness(tmp_path, profile="claude-code", overrides=settings_overrides(stages=["clearing"], clearing={"trigger_tokens": 100, "clear_at_least": 10, "keep_recent": 1}))
    try:
        sent = [h.send(ApiKind.ANTHROPIC, anthropic_tool_loop(n, result_words=300)) for n in (3, 4)]
        held = h.rt.bodies._lru.held
        ev = h.rt.bus.recent[-1]
        ev.to_json()  # (as the log writer makes it)
        h.rt.forget_conversations()
        assert h.rt.bodies._lru.held < held / 2
        for s in sent:
            got = h.rt.bodies.get(s.ctx.flow_id)
            assert got["original"] == s.ctx.original and got["rewritten"] == (s.body if s.changed else None)
        assert [e["flow_id"] for e in h.rt.bodies.for_session(sent[0].ctx.session)][-1] == sent[1].ctx.flow_id
        h.rt.forget_conversations()  # packed once
        assert h.rt.bodies.get(sent[1].ctx.flow_id)["original"] == sent[1].ctx.original
        assert ev._json is None and orjson.loads(ev.to_json())["seq"] == ev.seq  # the events' JSON made again
    finally:
        h.close()


def test_settle_gc_freezes_and_raises_thresholds(tmp_path):
    before = gc.get_threshold()
    h = Harness(tmp_path, profile="claude-code", overrides=settings_overrides(stages=["clearing"]))
    try:
        info = h.rt.settle_gc("startup")
        assert info is not None and gc.get_freeze_count() > 0 and gc.get_threshold()[0] >= 10_000
        assert [e for e in h.rt.bus.recent if e.type == "gc"]
        h.apply({"pipeline": {"gc_tuning": False}})
        assert h.rt.settle_gc("startup") is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
        h.close()


def test_compaction_takes_the_pipelines_message_counts(tmp_path, monkeypatch):
    """Deciding a compaction counts no message again: the pipeline counted the original's messages
    (``ctx.history.tokens_kept``), and those counts are the ones compaction sums."""
    h = Harness(tmp_path, profile="claude-code", overrides=settings_overrides(window=20_000, stages=["compaction"]))
    try:
        body = anthropic_tool_loop(12, result_words=300)
        recounted = []
        real = h.rt.tokens.count_message
        monkeypatch.setattr(h.rt.tokens, "count_message", lambda *a, **k: recounted.append(1) or real(*a, **k))
        sent = h.send(ApiKind.ANTHROPIC, body)
        assert [e for e in sent.events("compaction") if e.get("applied")]
        assert recounted == []
    finally:
        h.close()


def test_a_responses_rewrite_reuses_its_messages_bytes_and_counts(tmp_path):
    """The history key is the dialect's (``input`` for Responses): a rewrite's unchanged items keep their
    entries (their bytes copied in, their counts reused) and the counts equal a fresh count."""
    h = Harness(tmp_path, profile="codex", overrides=settings_overrides(
        stages=["clearing"], clearing={"trigger_tokens": 100, "clear_at_least": 10, "keep_recent": 1}))
    try:
        body = responses_tool_loop(4, result_words=300)
        sent = h.send(ApiKind.OPENAI_RESPONSES, body)
        assert sent.changed
        entries = sent.ctx.history.wire_entries
        assert entries is not None and any(e is not None for e in entries)
        assert sent.ctx.tokens_out == h.rt.tokens.count_request(ApiKind.OPENAI_RESPONSES, sent.body)
    finally:
        h.close()


def test_forgetting_the_conversations_drops_the_strippers_and_the_state_stores_memo(tmp_path):
    """issue 41: after the idle forget the engine still held the strippers' cleaned texts (up to 16M characters),
    the state store's memo of what it wrote, the token counts (up to 200,000) and the memos of pure functions
    (clearing's fingerprints and stubs, scrub's texts); they go too, and the next request is rewritten and
    counted as before."""
    h = Harness(tmp_path, profile="claude-code", overrides=settings_overrides(stages=["strip", "clearing"], clearing={"trigger_tokens": 100, "clear_at_least": 10, "keep_recent": 1}))
    try:
        body = anthropic_tool_loop(4, result_words=300)
        first = h.send(ApiKind.ANTHROPIC, body)
        assert h.rt.memo("strip.strippers", dict) and h.rt.state._written.held
        assert h.rt.tokens.cache_info()["entries"] and clearing._digest_of.memo.held
        h.rt.forget_conversations()
        assert not h.rt.memo("strip.strippers", dict) and not h.rt.state._written.held
        assert not h.rt.tokens.cache_info()["entries"] and not clearing._digest_of.memo.held
        again = h.send(ApiKind.ANTHROPIC, body)
        assert again.body == first.body and again.ctx.tokens_in == first.ctx.tokens_in
    finally:
        h.close()
