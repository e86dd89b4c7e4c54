"""Ingestion: conversation -> items, and the non-blocking, words-first submission into real Chroma."""

from __future__ import annotations

import threading
import time

from contextwarden.core.events import EventBus
from contextwarden.memory.ids import memory_id
from contextwarden.memory.ingest import Ingestor, items_from_messages
from contextwarden.memory.pending import PendingTable
from contextwarden.models import ApiKind
from tests.support.memstore import events, item, store
from tests.support.wait import wait_until

LONG_OUTPUT = "# pytest report\n\n" + "".join(
    f"## test_module_{i}\n\nFAILED test_{i} - AssertionError: expected {i}, got {i + 1}\n"
    + "".join(f"  frame {j}: src/app/handler_{i}.py line {j * 10}\n" for j in range(8)) + "\n"
    for i in range(6))


def test_anthropic_messages_become_items_with_tool_names():
    msgs = [
        {"role": "user", "content": "Why does the build fail?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "private reasoning", "signature": "sig"},
            {"type": "text", "text": "Let me run the tests."},
            {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "pytest -x"}},
            {"type": "tool_use", "id": "toolu_2", "name": "Read", "input": {"file_path": "setup.cfg"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "1 failed: test_auth"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "[metadata]\nname = app"}]},
            {"type": "text", "text": "go on <memory>injected block</memory>"}]},
    ]
    items = items_from_messages(msgs, ApiKind.ANTHROPIC, "s1", "t-a", 10, tags=["build"],
                                clean_text={12: "go on"})
    got = [(i.turn, i.role, i.kind, i.tool, i.text) for i in items]
    assert got == [
        (10, "user", "message", None, "Why does the build fail?"),
        (11, "assistant", "message", None, 'Let me run the tests.\nBash {"command":"pytest -x"}\nRead {"file_path":"setup.cfg"}'),
        (12, "tool", "tool_result", "Bash", "1 failed: test_auth"),
        (12, "tool", "tool_result", "Read", "[metadata]\nname = app"),
    ]
    # ("go on" has no content words: not an item; test_envelopes)
    assert all(i.tags == ["build"] and i.session == "s1" and i.tenant == "t-a" for i in items)
    assert not any("private reasoning" in i.text for i in items)


def test_openai_chat_and_responses_messages():
    chat = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": [{"type": "text", "text": "list files"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "ls", "arguments": "{\"path\": \".\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "README.md\nsrc"},
    ]
    got = [(i.turn, i.role, i.kind, i.tool, i.text) for i in items_from_messages(chat, ApiKind.OPENAI_CHAT, "s", "t", 0)]
    assert got == [(1, "user", "message", None, "list files"),
                   (2, "assistant", "message", None, 'ls {"path": "."}'),
                   (3, "tool", "tool_result", "ls", "README.md\nsrc")]
    responses = [
        {"role": "developer", "content": "be brief"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
        {"type": "reasoning", "summary": []},
        {"type": "function_call", "call_id": "fc_1", "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"},
        {"type": "function_call_output", "call_id": "fc_1", "output": "rain, 7C"},
    ]
    got = [(i.turn, i.role, i.kind, i.tool, i.text)
           for i in items_from_messages(responses, ApiKind.OPENAI_RESPONSES, "s", "t", 0)]
    assert got == [(1, "user", "message", None, "weather?"),
                   (3, "assistant", "message", None, 'get_weather {"city":"Oslo"}'),
                   (4, "tool", "tool_result", "get_weather", "rain, 7C")]


def test_ingest_stores_chunks_emits_events_and_feeds_the_lexical_side(cw_home):
    s = store(cw_home)
    bus = EventBus()
    added: list = []
    ing = Ingestor(s, bus, on_added=added.extend, chunk_tokens=120)
    tool = item(LONG_OUTPUT, role="tool", kind="tool_result", tool="Bash", turn=3)
    short = item("what failed in the handler tests?", turn=2)
    assert ing.submit([short, tool])
    assert ing.flush(300)
    ev = events(bus, "memory")[-1]
    chunks = [x for x in s.iter_items() if x.kind == "chunk"]
    assert ev["ingested"] == ev["new"] == len(chunks) + 1 and ev["chunks"] == len(chunks) > 3 and ev["ms"] > 0
    assert {(c.tool, c.turn, c.role, c.source_id) for c in chunks} == {("Bash", 3, "tool", memory_id(LONG_OUTPUT))}
    assert sorted(x.id for x in added) == sorted(x.id for x in s.iter_items())
    # the clearing stage's stub id (memory_id of the original output) finds every chunk
    assert len(s.get_by_ids([memory_id(LONG_OUTPUT)], ["t-a"])) == len(chunks)
    assert "handler_4" in s.vector_query("stack frames of test_4 in handler_4.py", ["t-a"], 1)[0][0].text
    # the same turn again (the next request repeats the history): nothing new, no callback
    added.clear()
    assert ing.submit([short, tool]) and ing.flush(300)
    assert events(bus, "memory")[-1]["new"] == 0 and added == []
    ing.close()
    s.close()


def test_a_submission_never_waits_for_a_stuck_store_and_nothing_is_dropped(cw_home):
    s = store(cw_home)
    bus = EventBus()
    ing = Ingestor(s, bus, journal=PendingTable(max_items=5), backfill=False)
    with s._lock:  # the store is "slow": the storer blocks inside add until we let go
        assert ing.submit([item(f"first batch {i}") for i in range(3)])
        assert wait_until(lambda: ing.indexed == 0, 10, interval=0.005)  # the storer took it and is stuck storing it
        assert ing.submit([item(f"second batch {i}") for i in range(4)])
        # submit from another thread while the store stays blocked, past the table's bound: it must return
        # without waiting for the storer, which cannot move until this block ends
        result: list = []
        t = threading.Thread(target=lambda: result.append(ing.submit([item(f"third batch {i}") for i in range(2)])))
        t.start()
        t.join(60)
        assert not t.is_alive() and result == [True]
        assert ing.pending == 9 and ing.stats["dropped"] == 0
    assert ing.flush(300)
    # past the bound the oldest waiting were stored as text (embedded later): none dropped
    assert sorted(x.text for x in s.iter_items()) == sorted([f"first batch {i}" for i in range(3)]
                                                           + [f"second batch {i}" for i in range(4)]
                                                           + [f"third batch {i}" for i in range(2)])
    assert not [e for e in events(bus, "memory") if e.get("dropped")] and ing.stats["stored_text_only"] == 4
    ing.close()
    assert ing.submit([item("after close")]) is False and ing.stats["dropped"] == 1
    s.close()


def test_while_calls_keep_coming_the_vectors_wait_and_the_words_do_not(cw_home):
    """The memory process's storer (``quiet_s``) embeds and stores once no call came for that long: under a
    steady load the requests keep the CPU, and every item is searchable by its words as it is submitted."""
    s = store(cw_home)
    indexed: list = []
    ing = Ingestor(s, EventBus(), on_indexed=indexed.extend, backfill=False, quiet_s=0.4)
    t0 = time.monotonic()
    assert ing.submit([item("the staging database listens on port 6543")])
    while time.monotonic() - t0 < 1.5:  # a call every 0.1 s: never quiet for 0.4 s
        ing.touch()
        assert ing.pending == 1 and not list(s.iter_items())  # not stored, not embedded
        time.sleep(0.1)
    assert [x.text for x in indexed] == ["the staging database listens on port 6543"]  # its words at once
    assert ing.flush(300)  # the calls stopped: stored within the quiet time and a batch
    assert [x.text for x in s.iter_items()] == ["the staging database listens on port 6543"]
    ing.close()
    s.close()


def test_a_failing_store_is_an_error_event_not_an_exception(cw_home):
    s = store(cw_home)
    bus = EventBus()
    ing = Ingestor(s, bus)
    s.close()  # Chroma gone under the ingestor
    assert ing.submit([item("lost turn")]) is True
    assert ing.flush(300)
    errs = events(bus, "error")
    assert errs and errs[-1]["where"] == "memory.ingest" and "dropped 1 items" == errs[-1]["action"]
    assert ing.submit([item("another lost turn")]) and ing.flush(300)  # keeps working, one event a minute
    assert len(events(bus, "error")) == 1
    ing.close()


def test_backfill_runs_in_the_worker_when_the_model_appears(cw_home):
    s = store(cw_home, with_model=False)
    s.add([item("stored before the model was there")])
    s.close()
    s = store(cw_home)
    bus = EventBus()
    ing = Ingestor(s, bus)
    assert wait_until(lambda: events(bus, "memory"), 10, interval=0.005)
    assert events(bus, "memory")[0] == {"backfilled": 1}
    assert s.vector_query("model", ["t-a"], 1)[0][0].text == "stored before the model was there"
    ing.close()
    s.close()


def test_history_not_seen_live_is_an_ingest_event_and_a_dimmed_tui_row(cw_home):
    from contextwarden.tui.store import Store

    s = store(cw_home)
    bus = EventBus()
    ing = Ingestor(s, bus, chunk_tokens=120)
    history = [item(f"resumed message {i} about the deploy script", turn=i, tags=["deploy"]) for i in range(4)]
    history.append(item(LONG_OUTPUT, role="tool", kind="tool_result", tool="Bash", turn=4))
    assert ing.submit(history, flow_id="flow-7", history=True, messages=5) and ing.flush(300)
    ev = next(e for e in bus.recent if e.type == "ingest")
    d = ev.data
    assert ev.session == "s1" and ev.flow_id == "flow-7"
    assert d["history"] is True and d["messages"] == 5 and d["session"] == "s1" and d["turn"] == 4
    assert d["items"] == d["new"] == 4 + d["chunks"] and d["chunks"] > 3 and d["deduplicated"] == 0
    assert d["ms"] > 0 and d["queued"] == 0 and d["tags"] == ["deploy"]
    # a live turn is a `memory` event only (the TUI would show an `ingest` event as a history row)
    live = [item("resumed message 0 about the deploy script", turn=5), item("a new live question", turn=6)]
    assert ing.submit(live, flow_id="flow-8") and ing.flush(300)
    assert [e.data["history"] for e in bus.recent if e.type == "ingest"] == [True]
    m = events(bus, "memory")[-1]
    assert m["new"] == 1 and m["deduplicated"] == 1 and m["items"] == 2 and m["queued"] == 0
    # the same history again (a second proxy start): stored before, so skipped before redaction
    assert ing.submit(history, flow_id="flow-9", history=True, messages=5) and ing.flush(300)
    again = [e.data for e in bus.recent if e.type == "ingest"][-1]
    assert again["new"] == 0 and again["deduplicated"] == 5 and ing.stats["skipped_seen"] >= 5
    ing.close()
    s.close()
    tui = Store()
    tui.apply([ev.to_dict()])
    row = tui.newest_requests()[0]
    assert row.ingested and row.session == "s1" and row.mode == "history" and row.turn == 4
    assert row.reason == f"ingested {d['items']} from history" and row.tags == ["deploy"]


def test_the_memory_stage_flags_a_resumed_conversation_as_history(tmp_path):
    from contextwarden.offline.memory.replay import Replayer

    p = tmp_path / "profile.yaml"
    p.write_text("extends: claude-code\nmemory: {inject: false}\ntokens: {calibrate: false}\n")
    rp = Replayer.from_profile(str(p), tmp_path / "home")
    try:
        assert rp.memory().wait_ready(120)
        resumed = [{"role": "user", "content": "earlier question about Lisbon bridges"},
                   {"role": "assistant", "content": "earlier answer"},
                   {"role": "user", "content": "and now a question about Porto"}]
        rp.complete(rp.send(resumed, session="resumed-1"), "reply one")
        rp.complete(rp.send([{"role": "user", "content": "a brand new chat"}], session="fresh-1"), "hi")
        resumed += [{"role": "assistant", "content": "reply one"}, {"role": "user", "content": "next"}]
        rp.complete(rp.send(resumed, session="resumed-1"), "reply two")
        rp.flush()
        ing = [e for e in rp.runtime.bus.recent if e.type == "ingest"]
        assert len(ing) == 1 and ing[0].session == "resumed-1" and ing[0].flow_id
        assert ing[0].data["history"] is True and ing[0].data["messages"] == 3 and ing[0].data["items"] == 4
    finally:
        rp.close()


def test_a_live_sessions_next_request_before_its_turn_is_stored_is_not_history(tmp_path):
    """A client that sends its next request before the previous turn completed (the marker is written
    then) is a live session: its messages are not reported as history the proxy had not seen."""
    from contextwarden.offline.memory.replay import Replayer

    p = tmp_path / "profile.yaml"
    p.write_text("extends: claude-code\nmemory: {inject: false}\ntokens: {calibrate: false}\n")
    rp = Replayer.from_profile(str(p), tmp_path / "home")
    try:
        assert rp.memory().wait_ready(120)
        msgs = [{"role": "user", "content": "read the deploy script"}]
        first = rp.send(msgs, session="live-1")
        msgs += [{"role": "assistant", "content": "it deploys to staging"}, {"role": "user", "content": "and prod?"}]
        second = rp.send(msgs, session="live-1")  # before the first turn completed
        rp.complete(first, "it deploys to staging")
        rp.complete(second, "prod needs a tag")
        rp.flush()
        assert [e for e in rp.runtime.bus.recent if e.type == "ingest"] == []
    finally:
        rp.close()
