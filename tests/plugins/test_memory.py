"""The memory stage through the real pipeline (prepare + Pipeline.process, real Chroma, the real model):
injection after compaction, cache safety, tenant isolation, fail-open paths and ingestion."""

from __future__ import annotations

import textwrap
import threading

import yaml

from contextwarden.memory.ids import memory_id
from contextwarden.memory.inject import OPEN, closing_tag
from contextwarden.memory.store import MemoryStore
from contextwarden.models import ApiKind
from contextwarden.offline.memory.replay import Replayer
from contextwarden.store import statecache
from contextwarden.store.statecache import state_cache
from contextwarden.wire.references import names
from tests.support.wait import wait_until

FACTS = ["I adopted a beagle named Biscuit from the Alameda shelter last spring.",
         "My sister Clara lives in Lisbon and designs bridges for a living.",
         "The deploy script is tools/deploy.sh and it reads the STAGING_HOST variable."]
HANDBOOK = ["The orion service's deploy key rotates every 14 days and is kept in vault path secret/orion/deploy.",
            "Our staging database is postgres 15 on host db-stg-3, and its nightly backup runs at 02:40 UTC.",
            "The billing worker retries a failed invoice 5 times with a 90 second backoff before paging on-call.",
            "Frontend builds use pnpm 9; the CI cache key includes the lockfile hash and the node major version."]
FILLER = ("Turn {i}: let's go over the weekly grocery list again, the usual vegetables, bread and coffee, "
          "nothing special, and the weather stayed grey and rainy all week long. ")


def profile(tmp_path, extra: str = "", window: int = 2048) -> str:
    """Claude Code's profile with a small window (so compaction drops things), plus ``extra`` YAML
    merged section by section."""
    data = {"extends": "claude-code",
            "tokens": {"context_window": window, "calibrate": False},
            "compaction": {"soft_threshold": 0.45, "hard_threshold": 0.55, "target": 0.3, "protect_recent_turns": 2,
                           "summary_max_tokens": 300, "min_span_tokens": 300},
            "memory": {"budget_fraction": 0.35, "top_k": 8, "timeout_ms": 20000},
            "pipeline": {"stage_budget_ms": 60000}}
    for section, values in (yaml.safe_load(textwrap.dedent(extra)) or {}).items():
        data[section] = {**data.get(section, {}), **values}
    p = tmp_path / "profile.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def replayer(tmp_path, extra: str = "", window: int = 2048, api=ApiKind.ANTHROPIC) -> Replayer:
    rp = Replayer.from_profile(profile(tmp_path, extra, window), tmp_path / "home", api=api)
    svc = rp.memory()
    if svc is not None:
        assert svc.wait_ready(120)
    return rp


def converse(rp: Replayer, key: str = "sk-alice", session: str = "s1", facts=FACTS, turns: int = 24) -> list[dict]:
    """A conversation that states ``facts`` early on, then talks long enough for compaction to drop them."""
    msgs: list[dict] = []
    for i in range(turns):
        fact = 0 < i <= len(facts)
        msgs.append({"role": "user", "content": facts[i - 1] if fact else FILLER.format(i=i)})
        sent = rp.send(msgs, api_key=key, session=session)
        reply = f"Noted ({i}). " + FILLER.format(i=i)[:120]
        rp.complete(sent, reply)
        msgs.append({"role": "assistant", "content": reply})
    rp.flush()
    return msgs


def memory_event(rp: Replayer, flow_id: str) -> dict:
    return next(e.data for e in reversed(rp.runtime.bus.recent) if e.type == "memory" and e.flow_id == flow_id)


def ask(rp, msgs, question, key="sk-alice", session="s1", cache_control=True):
    content = [{"type": "text", "text": question, **({"cache_control": {"type": "ephemeral"}} if cache_control else {})}]
    return rp.send(msgs + [{"role": "user", "content": content}], api_key=key, session=session)


def test_a_compacted_fact_comes_back_after_the_last_cache_breakpoint(tmp_path):
    rp = replayer(tmp_path)
    try:
        msgs = converse(rp)
        sent = ask(rp, msgs, "What is the name of the dog I adopted?")
        assert sent.outcome.reason == "rewritten"  # the validator accepted the body
        wire = sent.wire
        assert wire["system"] if "system" in sent.ctx.original else True
        last = wire["messages"][-1]["content"]
        # the client's block with its breakpoint stays first and unchanged; memory follows it
        assert last[0] == {"type": "text", "text": "What is the name of the dog I adopted?", "cache_control": {"type": "ephemeral"}}
        block = last[-1]["text"]
        assert block.startswith(OPEN) and block.endswith(closing_tag(block)) and "cache_control" not in last[-1]
        assert FACTS[0] in block and "## session s1" in block and "#2 user | " in block
        # the fact is nowhere else in the body: compaction took it out, memory brought it back
        others = [m for m in wire["messages"][:-1]]
        assert FACTS[0] not in str(others)
        ev = memory_event(rp, sent.ctx.flow_id)
        assert ev["injected"] >= 1 and ev["tokens"] > 0 and ev["skipped"] is None and ev["ms"] > 0
        assert memory_id(FACTS[0]) in ev["ids"]
        top = ev["scores"][ev["ids"].index(memory_id(FACTS[0]))]
        assert top["fused"] > 0 and top["vector"] is not None and top["lexical"] is not None
        assert ev["tokens"] <= ev["budget"] + 200
        assert sent.tokens() <= 2048
        compaction = [e.data for e in rp.runtime.bus.recent if e.type == "compaction" and e.flow_id == sent.ctx.flow_id]
        assert any(c.get("applied") for c in compaction)
    finally:
        rp.close()


def test_the_request_after_an_injection_reads_the_whole_prefix_the_injected_one_wrote(tmp_path, monkeypatch):
    """Injection is not sticky, and need not be for the cache: the next request is the client's own body,
    without the block. Billed under the prompt-caching model (contextwarden.wire.cost), it reads what it would
    have read had nothing been injected, and writes not one token more (docs/REPLAY.md, "Why memory
    injection is not sticky")."""
    import copy

    from contextwarden.wire import cost
    from contextwarden.wire.cost import Price, PromptCache, boundaries

    # the test's prompts are short (a 2K window): a model that caches any prefix, priced like Sonnet
    monkeypatch.setitem(cost.PRICES, "claude-test-tiny-cache", Price(3, 15, 1))
    rp = replayer(tmp_path)
    try:
        msgs = converse(rp)
        a = ask(rp, msgs, "What is the name of the dog I adopted?")
        assert OPEN in a.wire["messages"][-1]["content"][-1]["text"]
        without = copy.deepcopy(a.wire)
        without["messages"][-1]["content"].pop()  # the same body, minus the memory block
        assert OPEN not in str(without)
        question = {"role": "user", "content": [{"type": "text", "text": "What is the name of the dog I adopted?"}]}
        later = msgs + [question, {"role": "assistant", "content": "Your beagle is called Biscuit."},
                        {"role": "user", "content": [{"type": "text", "text": "And where does my sister live?",
                                                      "cache_control": {"type": "ephemeral"}}]}]
        # the compaction A got is re-applied as it is, not extended (B is about memory, not compaction)
        rp.runtime.apply_overrides({"compaction": {"soft_threshold": 0.97, "hard_threshold": 0.99}})
        b = rp.send(later, api_key="sk-alice", session="s1")
        assert b.outcome.reason in ("rewritten", "unchanged")
        assert OPEN not in str(b.wire["messages"][:-1])  # the block did not stay on A's message
        counter, model = rp.runtime.tokens, "claude-test-tiny-cache"
        bills = []
        for first in (a.wire, without):
            cache = PromptCache()
            cache.bill(boundaries({**first, "model": model}, counter), 0.0, model)
            bills.append(cache.bill(boundaries({**b.wire, "model": model}, counter), 60.0, model))
        injected, plain = bills
        assert (injected.read, injected.write, injected.uncached) == (plain.read, plain.write, plain.uncached)
        # all of the injected request's prefix, up to its breakpoint (the client's block before the memory)
        assert injected.read >= boundaries({**without, "model": model}, counter)[-1].cum > 0
    finally:
        rp.close()


def test_two_api_keys_see_zero_of_each_others_memory(tmp_path):
    rp = replayer(tmp_path)
    try:
        alice = converse(rp, key="sk-alice", session="shared-name")
        bob_facts = ["My cat is called Pixel and she hates the vacuum cleaner.",
                     "I moved to Porto for a job at a shipping company."]
        bob = converse(rp, key="sk-bob", session="shared-name", facts=bob_facts)
        alice_items = set()
        svc = rp.memory()
        a_tenant = rp.send(alice[:1], api_key="sk-alice").ctx.tenant
        b_tenant = rp.send(bob[:1], api_key="sk-bob").ctx.tenant
        assert a_tenant != b_tenant
        for it in svc.store.iter_items([a_tenant]):
            alice_items.add(it.memory_id)
        assert {memory_id(f) for f in FACTS} <= alice_items
        cross = 0
        for q in ["What is the name of the dog I adopted?", "Where does my sister Clara live?",
                  "Which variable does tools/deploy.sh read?", "Tell me about Biscuit the beagle"]:
            sent = ask(rp, bob, q, key="sk-bob", session="shared-name")
            ev = memory_event(rp, sent.ctx.flow_id)
            cross += len(set(ev["ids"]) & alice_items)
            assert not any(f in str(sent.wire) for f in FACTS)
        assert cross == 0
        # positive control: the same questions from Alice's key do find her facts
        sent = ask(rp, alice, "What is the name of the dog I adopted?", key="sk-alice", session="shared-name")
        assert FACTS[0] in sent.wire["messages"][-1]["content"][-1]["text"]
    finally:
        rp.close()


def test_a_shared_workspace_is_readable_by_every_tenant(tmp_path):
    rp = replayer(tmp_path, "memory: {shared_workspace: team}\n")
    try:
        converse(rp, key="sk-alice", session="a")
        bob = converse(rp, key="sk-bob", session="b", facts=["I like green tea."], turns=8)
        sent = ask(rp, bob, "What is the name of the dog that was adopted?", key="sk-bob", session="b")
        ev = memory_event(rp, sent.ctx.flow_id)
        assert FACTS[0] in str(sent.wire["messages"][-1]), ev
        assert ev["workspace"] == "team"
    finally:
        rp.close()


def test_nothing_is_injected_while_the_history_still_holds_it(tmp_path):
    rp = replayer(tmp_path, window=200_000)
    try:
        msgs = converse(rp, turns=6)
        sent = ask(rp, msgs, "What is the name of the dog I adopted?")
        ev = memory_event(rp, sent.ctx.flow_id)
        assert ev["injected"] == 0 and ev["skipped"] in ("nothing relevant", "no candidates", "active topics")
        assert sent.outcome.reason == "unchanged" and OPEN not in str(sent.wire)
    finally:
        rp.close()


def test_the_event_names_the_question_words_the_block_holds_when_its_first_item_is_a_reply(tmp_path):
    """Facts each answered with the same reply (a stand-in's): the reply, found by what it answers, can rank
    first in the block, and the event still names the question's words the item the word ranking put highest
    holds (it read "best match on meaning only" while the fact matched on four words)."""
    rp = replayer(tmp_path, window=200_000)
    try:
        msgs: list[dict] = []
        for fact in HANDBOOK:
            msgs.append({"role": "user", "content": f"Note for the handbook: {fact} Please acknowledge."})
            rp.complete(rp.send(msgs, api_key="sk-alice", session="handbook"), "Hello from the stand-in upstream.")
            msgs.append({"role": "assistant", "content": "Hello from the stand-in upstream."})
        rp.flush()
        sent = rp.send([{"role": "user", "content": "How often does the orion deploy key rotate, and where is it kept?"}],
                       api_key="sk-alice", session="ask")
        ev = memory_event(rp, sent.ctx.flow_id)
        assert ev["injected"] >= 1 and "secret/orion/deploy" in str(sent.wire["messages"][-1]), ev
        assert {"orion", "deploy", "key"} <= set(ev["matched"]) and "matched on orion, deploy, key" in ev["why"], ev["why"]
    finally:
        rp.close()


def test_an_item_both_rankings_agree_on_passes_the_relevance_floor_and_content_free_messages_still_get_nothing(tmp_path):
    """Under the relevance floor (here above any similarity), an item in the top 5 of both the vector and
    the BM25 ranking that holds a word of the question is injected, and the event says so; a question with
    none of the stored items' words and content-free messages (the probe set's) still get 0 tokens."""
    rp = replayer(tmp_path, "memory: {relevance_floor: 0.95}\n", window=200_000)
    try:
        converse(rp, turns=6)
        sent = rp.send([{"role": "user", "content": "Which shelter did I adopt the beagle from?"}], api_key="sk-alice",
                       session="other")
        ev = memory_event(rp, sent.ctx.flow_id)
        assert ev["injected"] >= 1 and FACTS[0] in str(sent.wire["messages"][-1]), ev
        assert max(x["vector"] for x in ev["scores"]) < 0.95 and ev["agreed"]["id"] == memory_id(FACTS[0])
        assert "passed by agreement" in ev["why"] and ev["agreed"]["word"] in ("shelter", "adopt", "beagl")
        for content in ("What is the capital of France?", "hello", "thanks!", "go on", "continue"):
            got = rp.send([{"role": "user", "content": content}], api_key="sk-alice", session="other")
            mem = got.ctx.notes["memory"]
            assert mem["tokens"] == 0 and mem["skipped"] in ("nothing relevant", "no content words"), (content, mem)
            assert OPEN not in str(got.wire)
    finally:
        rp.close()


def test_items_not_embedded_yet_are_judged_by_the_relevance_floor_too(tmp_path, monkeypatch):
    """Items stored moments ago are found by their words before the embedder (at idle priority) reaches
    them: held back here, they have no similarity of their own. The ones that could be given are embedded
    at the search, so that a message sharing only a word with them gets nothing, and a question about
    them still gets them."""
    gate = threading.Event()
    store_add = MemoryStore.add_items  # (the storer's way in: nothing is embedded into the store until the gate opens)

    def held(self, items, *a, **kw):
        gate.wait(120)
        return store_add(self, items, *a, **kw)

    monkeypatch.setattr(MemoryStore, "add_items", held)
    rp = replayer(tmp_path, window=200_000)
    try:
        msgs = [{"role": "user", "content": FACTS[0]}]
        rp.complete(rp.send(msgs, api_key="sk-alice", session="a"), "What a lovely name for a beagle!")

        def asked(question: str) -> dict:
            sent = rp.send([{"role": "user", "content": question}], api_key="sk-alice", session="b")
            return memory_event(rp, sent.ctx.flow_id) | {"wire": str(sent.wire)}

        # (its words are indexed as the turn is handed over, on the ingestor's thread)
        ev = wait_until(lambda: (e := asked("Does Spring Boot need a new config for this service?"))["candidates"] and e,
                        timeout=60)
        assert not gate.is_set() and ev["injected"] == 0 and ev["skipped"] == "nothing relevant", ev
        assert ev["best_similarity"] < 0.23 and OPEN not in ev["wire"]  # (it shares "spring" and nothing else)
        ev = asked("Which shelter did I adopt the beagle from?")
        why = {k: ev.get(k) for k in ("skipped", "candidates", "best_similarity", "mode", "timings", "active_skipped", "ms")}
        assert ev["injected"] >= 1 and FACTS[0] in ev["wire"] and ev["scores"][0]["vector"] > 0.5, why
    finally:
        gate.set()
        rp.close()


def test_slow_chroma_times_out_and_the_request_goes_without_memory(tmp_path):
    rp = replayer(tmp_path, "memory: {timeout_ms: 150}\n")
    try:
        msgs = converse(rp)
        svc = rp.memory()
        real = svc.store.vector_query

        gate, answered = threading.Event(), threading.Event()

        def slow(*a, **kw):  # the real Chroma query, answering late (a loaded or remote server): only
            gate.wait(60)  # once the request is done, so the order below holds however loaded the machine
            answered.set()
            return real(*a, **kw)

        svc.store.vector_query = slow
        try:
            sent = ask(rp, msgs, "What is the name of the dog I adopted?")
            assert not answered.is_set()  # the request did not wait for the slow query to finish
        finally:
            gate.set()
        ev = memory_event(rp, sent.ctx.flow_id)
        assert ev["skipped"] == "timeout" and ev["injected"] == 0
        # it gave up gracefully, saying after how long and against which budget (not an error: nothing failed)
        assert ev["against"] == "memory.timeout_ms (150 ms)" and ev["deadline_ms"] == 150
        assert ev["gave_up"].startswith(f"retrieval gave up after {ev['gave_up_after_ms']:.0f} ms against memory.timeout_ms (150 ms): ")
        assert ev["gave_up_after_ms"] >= 150
        errs = [e.data for e in rp.runtime.bus.recent if e.type == "error" and e.flow_id == sent.ctx.flow_id]
        assert not [e for e in errs if e["where"] == "memory"]
        # the other stages' work still goes out: compacted, valid, no memory block
        assert sent.outcome.reason == "rewritten" and OPEN not in str(sent.wire)
    finally:
        rp.close()


def test_chroma_down_means_requests_go_without_memory(tmp_path):
    rp = replayer(tmp_path, "memory: {chroma_url: 'http://127.0.0.1:9'}\n")
    try:
        sent = rp.send([{"role": "user", "content": "hello there, what did we say about Lisbon?"}])
        ev = memory_event(rp, sent.ctx.flow_id)
        assert ev["skipped"] == "unavailable" and ev["injected"] == 0
        assert any(e.type == "error" and e.data.get("where") == "memory" for e in rp.runtime.bus.recent)
        assert sent.outcome.reason in ("unchanged", "rewritten")
    finally:
        rp.close()


def test_each_message_is_ingested_once_and_the_reply_too(tmp_path):
    rp = replayer(tmp_path, window=200_000)
    try:
        svc = rp.memory()
        msgs = [{"role": "user", "content": "first question about the Alameda shelter"}]
        sent = rp.send(msgs)
        rp.complete(sent, "first answer mentioning beagles")
        rp.flush()
        assert svc.store.count() == 2
        msgs += [{"role": "assistant", "content": "first answer mentioning beagles"},
                 {"role": "user", "content": "second question about Lisbon bridges"}]
        sent = rp.send(msgs)
        rp.complete(sent, "second answer")
        rp.flush()
        texts = sorted(it.text for it in svc.store.iter_items([sent.ctx.tenant]))
        assert texts == sorted(["first question about the Alameda shelter", "first answer mentioning beagles",
                                "second question about Lisbon bridges", "second answer"])
        ingested = [e.data for e in rp.runtime.bus.recent if e.type == "memory" and "ingested" in e.data]
        assert [d["ingested"] for d in ingested] == [2, 2]  # the marker skips what was stored before
        assert all(it.tags for it in svc.store.iter_items([sent.ctx.tenant]))
        assert len(svc.lexical) == 4
    finally:
        rp.close()


def test_openai_chat_requests_get_memory_in_the_last_user_message(tmp_path):
    rp = replayer(tmp_path, api=ApiKind.OPENAI_CHAT)
    try:
        msgs = converse(rp)
        sent = rp.send(msgs + [{"role": "user", "content": "Which variable does the deploy script read?"}],
                       api_key="sk-alice", session="s1")
        assert sent.outcome.reason == "rewritten"
        last = sent.wire["messages"][-1]
        assert last["role"] == "user" and last["content"].startswith("Which variable does the deploy script read?\n\n" + OPEN)
        assert FACTS[2] in last["content"]
    finally:
        rp.close()


def test_observe_style_inject_off_still_ingests(tmp_path):
    rp = replayer(tmp_path, "memory: {inject: false}\n")
    try:
        msgs = converse(rp, turns=20)
        sent = ask(rp, msgs, "What is the name of the dog I adopted?")
        assert memory_event(rp, sent.ctx.flow_id)["skipped"] == "inject off"
        assert OPEN not in str(sent.wire)
        assert rp.memory().store.count() >= 40
    finally:
        rp.close()


def test_cleared_tool_results_are_findable_by_the_id_their_stub_names(tmp_path):
    # (the working set, which keeps recent Reads, has its own tests: this one is about what memory stores)
    extra = "clearing: {trigger_tokens: 500, clear_at_least: 100, keep_recent: 1, min_result_tokens: 50, working_set_tokens: 0}\n"
    rp = replayer(tmp_path, extra, window=200_000)
    try:
        msgs = []
        outputs = {}
        for i in range(3):
            tid = f"toolu_{i}"
            out = "\n".join(f"src/module_{i}.py:{n}: def handler_{i}_{n}(request): return respond(request, {n})" for n in range(14))
            outputs[tid] = out
            msgs += [{"role": "user", "content": f"read module {i}"} if i == 0 else
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{i - 1}", "content": outputs[f"toolu_{i - 1}"]},
                                                  {"type": "text", "text": f"now module {i}"}]},
                     {"role": "assistant", "content": [{"type": "tool_use", "id": tid, "name": "Read", "input": {"path": f"src/module_{i}.py"}}]}]
            msgs.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": tid, "content": out}]})
            sent = rp.send(msgs)
            rp.complete(sent, f"module {i} read")
            msgs.pop()
        msgs.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2", "content": outputs["toolu_2"]}]})
        sent = rp.send(msgs)
        rp.complete(sent, "done")
        rp.flush()
        cleared = sent.ctx.notes.get("cleared") or []
        assert cleared, "the clearing stage should have cleared old results"
        svc = rp.memory()
        for c in cleared:
            found = svc.store.get_by_ids([c["memory_id"]], [sent.ctx.tenant])
            assert found and outputs[c["tool_use_id"]].splitlines()[0] in "\n".join(it.text for it in found)
    finally:
        rp.close()


def test_a_tool_loop_gets_no_memory_and_pays_no_search(tmp_path):
    rp = replayer(tmp_path, api=ApiKind.OPENAI_CHAT)
    try:
        msgs = [{"role": "user", "content": "read the config and tell me the port"},
                {"role": "assistant", "content": None,
                 "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "read", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "port = 8080"}]
        sent = rp.send(msgs)
        ev = memory_event(rp, sent.ctx.flow_id)
        assert ev["skipped"].startswith("the last message is not the user's") and "timings" not in ev
        assert sent.outcome.reason == "unchanged"
    finally:
        rp.close()


def _tool_loop(msgs: list, question: str) -> list:
    """The person's question, the assistant's tool call, and the tool's result as the last user message."""
    return msgs + [{"role": "user", "content": question},
                   {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01", "name": "Bash",
                                                      "input": {"command": "ls"}}]},
                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01",
                                                 "content": "deploy.sh  README.md"}]}]


def test_memory_goes_with_the_persons_message_not_every_tool_loop_step(tmp_path):
    rp = replayer(tmp_path)
    try:
        msgs = converse(rp)
        first = ask(rp, msgs, "What is the name of the dog I adopted?", cache_control=False)
        assert memory_event(rp, first.ctx.flow_id)["injected"] >= 1
        step = rp.send(_tool_loop(msgs, "What is the name of the dog I adopted?"), api_key="sk-alice", session="s1")
        ev = memory_event(rp, step.ctx.flow_id)
        assert ev["skipped"] == "tool loop step" and ev["injected"] == 0
        assert OPEN not in str(step.wire["messages"][-1]["content"])
    finally:
        rp.close()


def test_inject_tool_steps_brings_memory_to_tool_loop_steps_too(tmp_path):
    rp = replayer(tmp_path, "memory: {inject_tool_steps: true, agent_own_session: true}")
    try:
        msgs = converse(rp)
        step = rp.send(_tool_loop(msgs, "What is the name of the dog I adopted?"), api_key="sk-alice", session="s1")
        ev = memory_event(rp, step.ctx.flow_id)
        assert ev["injected"] >= 1, ev
        last = step.wire["messages"][-1]["content"]
        assert last[0]["type"] == "tool_result" and OPEN in last[-1]["text"]
    finally:
        rp.close()


def _agent_turn(msgs: list, question: str) -> list:
    """A tool round done (call, result, the assistant's answer), then the person's next message."""
    return _tool_loop(msgs, "list the repository") + [{"role": "assistant", "content": "Two files."},
                                                      {"role": "user", "content": question}]


def test_an_agents_session_gets_other_sessions_memory_not_its_own(tmp_path):
    """In a history with tool calls, the session's own items the client still sends are left out (the
    stubs and recall reach what we took of them); what the client itself dropped and another session's
    come through, and ``agent_own_session`` brings the own ones back."""
    question = "What is the name of the dog I adopted?"
    rp = replayer(tmp_path)
    try:
        msgs = converse(rp)
        plain = ask(rp, msgs, question, cache_control=False)  # no tool calls: as before
        assert memory_event(rp, plain.ctx.flow_id)["injected"] >= 1
        own = rp.send(_agent_turn(msgs, question), api_key="sk-alice", session="s1")
        ev = memory_event(rp, own.ctx.flow_id)
        assert ev["skipped"] == "own session" and ev["own_session"] >= 1 and ev["injected"] == 0
        assert OPEN not in str(own.wire["messages"][-1]["content"])
        # the client compacted on its own (its history no longer holds the facts): no stub names them
        dropped = rp.send(_agent_turn(msgs[8:], question), api_key="sk-alice", session="s1")
        assert FACTS[0] in str(dropped.wire["messages"][-1]["content"])
        other = rp.send(_agent_turn([], question), api_key="sk-alice", session="s2")
        ev = memory_event(rp, other.ctx.flow_id)
        assert ev["injected"] >= 1 and FACTS[0] in str(other.wire["messages"][-1]["content"])
    finally:
        rp.close()
    (tmp_path / "own").mkdir()
    rp = replayer(tmp_path / "own", "memory: {agent_own_session: true}")
    try:
        msgs = converse(rp)
        own = rp.send(_agent_turn(msgs, question), api_key="sk-alice", session="s1")
        assert memory_event(rp, own.ctx.flow_id)["injected"] >= 1
    finally:
        rp.close()


def test_an_agents_conversation_gets_an_item_once_and_only_what_names_something_new(tmp_path):
    """memory.agent_new_only: after the client's own compaction, what it dropped comes back with the
    person's next message, and not again with the one after it in the same conversation (the first
    answer holds what the model took from it); an assistant's item whose names (paths, identifiers) the
    client's request holds stays out. Off, the block is given again."""
    question = "What is the name of the dog I adopted?"
    for new_only in (True, False):
        (tmp_path / str(new_only)).mkdir()
        rp = replayer(tmp_path / str(new_only), f"memory: {{agent_new_only: {str(new_only).lower()}}}")
        try:
            msgs = converse(rp)
            first_msgs = _agent_turn(msgs[8:], question)
            first = rp.send(first_msgs, api_key="sk-alice", session="s1")
            assert FACTS[0] in str(first.wire["messages"][-1]["content"])
            rp.complete(first, "Biscuit, the beagle.")
            rp.flush()
            again = rp.send(first_msgs + [{"role": "assistant", "content": "Biscuit, the beagle."},
                                          {"role": "user", "content": question + " Tell me again."}],
                            api_key="sk-alice", session="s1")
            ev = memory_event(rp, again.ctx.flow_id)
            assert (FACTS[0] in str(again.wire["messages"][-1]["content"])) is not new_only, ev
            assert all(s.get("vector_rank") is not None and s.get("lexical_rank") is not None
                       for s in ev.get("scores") or ()) or not new_only
        finally:
            rp.close()
    assert names(FACTS[2]) == frozenset({"tools/deploy.sh", "STAGING_HOST"}) and not names(FACTS[0])


def test_a_persons_message_starts_its_search_as_it_is_read_and_injects_the_same(tmp_path):
    """memory.prefetch: the search's vector half starts before the other stages run (cw_request_start)
    and the stage finishes that very search, with the strip stage's cleaning of a channel envelope
    worked out ahead the same way; the block is the one a search made in the stage injects. A tool-loop
    step and a request memory cannot inject into start nothing."""
    question = "[Telegram Alice (@alice) id:123 +5m 2026-01-02 10:00 UTC]\nWhat is the name of the dog I adopted?"
    got = {}
    for name, extra in (("on", ""), ("off", "memory: {prefetch: false}")):
        (tmp_path / name).mkdir()
        rp = replayer(tmp_path / name, extra)
        try:
            msgs = converse(rp)
            sent = ask(rp, msgs, question, cache_control=False)
            ev = memory_event(rp, sent.ctx.flow_id)
            assert ev["injected"] >= 1 and "Biscuit" in str(sent.wire["messages"][-1]), ev
            got[name] = (ev, sent.wire["messages"][-1])
            step = rp.send(_tool_loop(msgs, question), api_key="sk-alice", session="s1")
            assert "memory_prefetch" not in step.ctx.notes and memory_event(rp, step.ctx.flow_id)["skipped"] == "tool loop step"
            svc = rp.memory()
            assert not svc._prepared  # nothing left waiting
        finally:
            rp.close()
    on, off = got["on"], got["off"]
    assert on[0]["timings"].get("prefetched") == 1 and "prefetched" not in off[0]["timings"]
    assert on[0]["ids"] == off[0]["ids"] and on[0]["scores"] == off[0]["scores"]
    import re

    def same(m):  # the block's delimiter carries each home's own nonce, its headings when each run stored them
        m = re.sub(r"contextwarden-memory-[0-9a-f]+", "contextwarden-memory-N", str(m))
        return re.sub(r"\b\d{1,2}:\d{2}\]", "HH:MM]", m)

    assert same(on[1]) == same(off[1])


def test_a_block_filled_to_the_last_token_keeps_the_request_within_the_window(tmp_path):
    """Windows one token apart move the block's fill through every gap to the room left: the request
    with memory in it never goes above the window (the pipeline would then send the decided state,
    without any memory), also when the question's string content becomes a list of text blocks."""
    rp = replayer(tmp_path, "memory: {budget_fraction: 1.0, top_k: 60, min_score: 0.0}", window=200_000)
    try:
        converse(rp)
        question = [{"role": "user", "content": "Tell me about the dog I adopted and my sister Clara in Lisbon."}]
        base = rp.send(question, api_key="sk-alice", session="q").ctx.tokens_in
        injected = set()
        for w in range(base + 220, base + 420):  # (the block's tags and preamble take ~170)
            rp.runtime.apply_overrides({"tokens": {"context_window": w}})
            sent = rp.send(question, api_key="sk-alice", session="q")
            assert sent.outcome.fallback is None, (w, sent.outcome.reason)
            assert sent.tokens() <= w
            injected.add(memory_event(rp, sent.ctx.flow_id).get("injected"))
        assert len(injected) >= 3  # the windows cross several items' edges
    finally:
        rp.close()


TITLE_PROMPT = "Generate a concise, sentence-case title (3-7 words) that captures the main topic of this session."


def test_claude_codes_title_call_is_neither_served_tagged_nor_stored(tmp_path):
    """Claude Code's helper call (another agent than the main one, no tools: the session's title) wraps the
    person's words in its own instruction: no memory goes in, no tags come out, nothing of it is stored.
    The session's main request, with tools, is served as before."""
    rp = replayer(tmp_path)
    try:
        converse(rp, session="s1")  # the facts, in another session of the same tenant
        cc = [("x-claude-code-session-id", "cc-1")]
        words = "What is the name of the dog I adopted?"
        title = rp.body([{"role": "user", "content": f"<session>\n{words}\n</session>\n\nWrite the title in the "
                                                     "language the user wrote in."}], system=TITLE_PROMPT)
        sent = rp.send(body=title, headers=cc, api_key="sk-alice")
        assert sent.ctx.agent.startswith("cc-1/") and not sent.ctx.agent.endswith("/main")
        ev = memory_event(rp, sent.ctx.flow_id)
        assert ev["skipped"] == "helper call" and ev["injected"] == 0 and "helper call" in ev["why"]
        assert sent.ctx.notes.get("tags") is None and sent.outcome.reason == "unchanged"
        rp.complete(sent, '{"title": "Naming the adopted dog"}')
        rp.flush()
        main = rp.body([{"role": "user", "content": words}],
                       system="You are an interactive CLI tool that helps users with software engineering tasks.",
                       tools=[{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}])
        served = rp.send(body=main, headers=cc, api_key="sk-alice")
        assert served.ctx.agent == "cc-1/main", served.ctx.agent
        assert memory_event(rp, served.ctx.flow_id)["injected"] >= 1, memory_event(rp, served.ctx.flow_id)
        found = rp.memory().search_hits("title language adopted dog", [sent.ctx.tenant], k=50)["hits"]
        assert found and not any(h["session"] == "cc-1" for h in found)  # s1's facts, nothing of the title call
    finally:
        rp.close()


def test_a_turns_words_do_not_wait_for_the_state_stores_lock(tmp_path, monkeypatch):
    """The ingestion marker is written soon, with the others (StateCache.put(soon=True)): a turn worker
    does not wait for the state store's lock, which every request's own writes take, so the next turn's
    items are searchable by their words while a request holds it (under load, they waited seconds)."""
    monkeypatch.setattr(statecache, "WRITE_EVERY_S", 3600.0)  # (not due during the test)
    rp = replayer(tmp_path, window=200_000)
    try:
        svc = rp.memory()
        words = ["zqa1b2c3d4e5", "zqf6a7b8c9d0"]
        sent = [rp.send([{"role": "user", "content": f"please read the deploy notes for {w[-4:]}"}], session=f"s{k}")
                for k, w in enumerate(words)]
        tenant = sent[0].ctx.tenant
        with rp.runtime.state._lock:  # a request's write holds it
            worker = threading.Thread(target=lambda: [rp.complete(s, f"Read them: cat notes.md  # {w}")
                                                      for s, w in zip(sent, words)], daemon=True)
            worker.start()  # the turn pool's worker: one turn after the other
            worker.join(30)
            assert not worker.is_alive()
            assert all(svc.lexical.query(w, [tenant], n=3) for w in words)
        state_cache(rp.runtime).flush()
        assert rp.runtime.state.get("memory.ingested", f"{tenant}:s1")["n"] == 1  # written, later
    finally:
        rp.close()
