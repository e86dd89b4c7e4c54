"""Claude Code's and Codex's own envelopes never become memory items or tags, and a message with no
content words is not searched (memory/envelopes.py), through the real pipeline (Replayer)."""

from __future__ import annotations

from contextwarden.memory.envelopes import content_words, strip_envelopes
from tests.e2e.test_memory_probes import CODEX, REMINDER
from tests.plugins.test_memory import replayer


def test_agents_envelopes_are_neither_items_nor_tags(tmp_path):
    rp = replayer(tmp_path, window=200_000)
    try:
        msgs = [{"role": "user", "content": [{"type": "text", "text": REMINDER},
                                             {"type": "text", "text": "Rename load_embedder in src/memory/service.py"}]},
                {"role": "assistant", "content": "Done: load_embedder is now open_model."},
                {"role": "system", "content": "Available agent types for the Agent tool: claude, Explore."},
                {"role": "user", "content": [{"type": "text", "text": CODEX}, {"type": "text", "text": "Now run the tests"}]}]
        sent = rp.send(msgs, api_key="sk-env", session="env")
        rp.complete(sent, "The tests pass.")
        assert rp.flush()
        items = list(rp.memory().store.iter_items([sent.ctx.tenant]))
        texts = sorted(it.text for it in items)
        assert texts == sorted(["Rename load_embedder in src/memory/service.py", "Done: load_embedder is now open_model.",
                                "Now run the tests", "The tests pass."])
        tags = {t.lower() for it in items for t in it.tags} | {t.lower() for t in sent.ctx.notes["tags"]}
        tags |= {t.lower() for t in sent.ctx.notes["active_tags"]}
        for envelope in ("system-reminder", "currentdate", "context", "environment_context", "cwd", "agent"):
            assert not any(envelope in t for t in tags), (envelope, tags)
    finally:
        rp.close()


def test_a_reminder_and_a_greeting_are_not_searched(tmp_path):
    rp = replayer(tmp_path, window=200_000)
    try:
        sent = rp.send([{"role": "user", "content": "My sister Clara lives in Lisbon and designs bridges."}], api_key="sk-g")
        rp.complete(sent, "Noted.")
        assert rp.flush()
        for content in ([{"type": "text", "text": REMINDER}, {"type": "text", "text": "hello"}], "thanks!", "go on"):
            got = rp.send([{"role": "user", "content": content}], api_key="sk-g", session="other")
            mem = got.ctx.notes["memory"]
            assert mem["skipped"] == "no content words" and mem["injected"] == 0 and "content words" in mem["why"]
            assert got.ctx.notes["tags"] == []  # "hello", "thanks" are no topics
        got = rp.send([{"role": "user", "content": "Where does Clara live?"}], api_key="sk-g", session="other")
        assert got.ctx.notes["memory"]["injected"] >= 1 and "Lisbon" in str(got.wire)
    finally:
        rp.close()


def test_strip_envelopes_and_content_words():
    assert strip_envelopes(REMINDER + "\nhello") == "hello"
    assert strip_envelopes("no envelope <b>here</b>") == "no envelope <b>here</b>"
    codex_exec = "Chunk ID: 9f1c2a\nWall time: 0.2309 seconds\nProcess exited with code 0\nOriginal token count: 18\nOutput:\n"
    assert strip_envelopes(codex_exec + "# Notes\nChunk ID: stays\n") == "# Notes\nChunk ID: stays"
    assert content_words("is anyone there?") == content_words("Thanks, go on!") == []
    assert content_words("Where does Clara live?") == ["clara", "live"]
