"""Claude Code's and Codex's own envelopes never become memory items or tags, and a message with no
content words is not searched (memory/envelopes.py), through the real pipeline (Replayer)."""

from __future__ import annotations

import numpy as np

from contextwarden.memory.envelopes import standing_context, strip_envelopes
from contextwarden.memory.lexical import LexicalIndex
from contextwarden.memory.phatic import content_words
from tests.e2e.test_memory_probes import CODEX, REMINDER
from tests.plugins.test_memory import replayer
from tests.support.memstore import embedder, item, store

INTERRUPTED = "[Request interrupted by user for tool use]"  # Claude Code's line when the person stopped it
CODEX_EXEC = "Chunk ID: 427b69\nWall time: 0.6900 seconds\nProcess exited with code 0\nOriginal token count: 17\nOutput:\n"


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


def test_a_turn_without_content_words_is_not_remembered(tmp_path):
    rp = replayer(tmp_path, window=200_000)
    try:
        msgs = [{"role": "user", "content": "My sister Clara lives in Lisbon and designs bridges."},
                {"role": "assistant", "content": "Noted: Clara, Lisbon, bridges."},
                {"role": "user", "content": "thanks!"},
                {"role": "assistant", "content": "Should I look up bridges she designed?"},
                {"role": "user", "content": [{"type": "text", "text": INTERRUPTED}]}]
        sent = rp.send(msgs, api_key="sk-thanks", session="thanks")
        rp.complete(sent, "You're welcome.")
        chat = [{"role": "user", "content": "Caroline: I went to the LGBTQ support group yesterday."},
                {"role": "assistant", "content": "Melanie: Thanks!"},
                {"role": "user", "content": "(1:10 pm on 8 May, 2023) Caroline: Bye!\n(1:10 pm on 8 May, 2023) Caroline: Painting tonight."}]
        sent2 = rp.send(chat, api_key="sk-thanks", session="chat")
        rp.complete(sent2, "Melanie: You too, see you!")
        assert rp.flush()
        texts = sorted(it.text for it in rp.memory().store.iter_items([sent.ctx.tenant]))
        assert texts == sorted(["My sister Clara lives in Lisbon and designs bridges.", "Noted: Clara, Lisbon, bridges.",
                                "Should I look up bridges she designed?",
                                "Caroline: I went to the LGBTQ support group yesterday.", "Caroline: Painting tonight."])
    finally:
        rp.close()


def test_a_tool_result_is_indexed_and_embedded_without_the_agents_envelope(cw_home):
    """Codex's head of a command's output (and Claude Code's reminder after a Read) is the same on every
    output: searched by it, every output would match "chunk wall time process"; the item stays verbatim."""
    output = "kestrel_deploy.sh\nNOTES.md"
    it = item(CODEX_EXEC + output + "\n", kind="tool_result", role="tool", tool="exec_command")
    idx = LexicalIndex()
    idx.add([it, item("     1→kestrel deploy\n" + REMINDER, turn=1, kind="tool_result", role="tool", tool="Read")])
    assert idx.query("chunk wall time seconds process exited code output", ["t-a"], n=5) == []
    assert idx.query("kestrel_deploy.sh", ["t-a"], n=5)[0].item.turn == 0
    assert not idx.query("currentDate: may or may not be relevant to your tasks", ["t-a"], n=5)
    s = store(cw_home)
    s.add([it])
    want = np.asarray(embedder()([output])[0])
    (got, sim), = s.vector_query("", ["t-a"], 1, query_embedding=want)
    assert got.text == it.text and sim > 0.999  # stored verbatim, embedded as the output alone


def test_a_reminder_and_a_greeting_are_not_searched(tmp_path):
    rp = replayer(tmp_path, window=200_000)
    try:
        sent = rp.send([{"role": "user", "content": "My sister Clara lives in Lisbon and designs bridges."}], api_key="sk-g")
        rp.complete(sent, "Noted.")
        assert rp.flush()
        for content in ([{"type": "text", "text": REMINDER}, {"type": "text", "text": "hello"}], "thanks!", "go on",
                        INTERRUPTED):
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
    assert strip_envelopes(INTERRUPTED + "\nCompiling 1 file (.ex)") == "Compiling 1 file (.ex)"
    assert strip_envelopes("it said [Request interrupted by user] once") == "it said [Request interrupted by user] once"
    # (the line alone: a stored turn's lines stay lines of the message, which tells memory it is still there)
    assert strip_envelopes("[Request interrupted by user] do it this way") == "[Request interrupted by user] do it this way"
    assert content_words("is anyone there?") == content_words("Thanks, go on!") == []
    assert content_words("Where does Clara live?") == ["clara", "live"]


def test_the_clients_standing_context_is_found_verbatim():
    agents = "# AGENTS.md instructions for /repo\n\n<INSTRUCTIONS>\nUse pytest -x.\n</INSTRUCTIONS>"
    assert standing_context(agents + "\n\nFix the login bug") == [agents]
    assert standing_context(CODEX) == [CODEX]
    assert standing_context(REMINDER + "\nhello") == [REMINDER.rstrip()]
    # a reminder that is not the client's context (a file it opened, its task list) is not standing context
    assert standing_context("<system-reminder>The user opened src/a.py in the IDE.</system-reminder>") == []
    assert standing_context("Fix the bug in src/a.py") == []
