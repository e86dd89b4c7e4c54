"""The ``clearing`` stage through the real pipeline (parse → stages → validator → bytes)."""

from __future__ import annotations

import copy
import time

import orjson
import pytest

from contextwarden.compress.policy import NS_SEEN
from contextwarden.memory.ids import memory_id
from contextwarden.models.base import ApiKind
from contextwarden.store.statecache import state_cache
from contextwarden.wire.conversation import result_text
from contextwarden.wire.history import session_key
from tests.support.stages import Harness, anthropic_tool_loop, chat_tool_loop, responses_tool_loop, settings_overrides

STAGES = ["strip", "clearing"]


def harness(home, **clearing) -> Harness:
    # the policies that keep the files being worked on have their own tests (test_fidelity, test_workingset)
    cfg = {"trigger_tokens": 8000, "clear_at_least": 1000, "keep_recent": 2, "keep_edited_reads": 0, "working_set_tokens": 0}
    cfg.update(clearing)
    return Harness(home, overrides=settings_overrides(window=200_000, stages=STAGES, clearing=cfg))


def results_of(body: dict) -> dict[str, object]:
    """tool_use_id -> content of every Anthropic tool_result."""
    out = {}
    for m in body["messages"]:
        if isinstance(m["content"], list):
            for b in m["content"]:
                if b.get("type") == "tool_result":
                    out[b["tool_use_id"]] = b["content"]
    return out


def use_order(body: dict) -> list[str]:
    return [b["id"] for m in body["messages"] if isinstance(m["content"], list) for b in m["content"] if b.get("type") == "tool_use"]


def is_stub(content) -> bool:
    return isinstance(content, str) and content.startswith("[contextwarden cleared this ")


def test_below_the_trigger_nothing_changes(cw_home):
    h = harness(cw_home, trigger_tokens=1_000_000)
    body = anthropic_tool_loop(6)
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert not sent.changed and sent.body == body
    assert sent.events("clearing") == []
    h.close()


def test_old_results_become_stubs_recent_ones_stay(cw_home):
    h = harness(cw_home)
    body = anthropic_tool_loop(8, result_words=500)
    original = copy.deepcopy(body)
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert sent.changed, sent.outcome.reason
    assert sent.ctx.original == original  # the client's body is never mutated
    before, after = results_of(original), results_of(sent.body)
    assert list(before) == list(after)  # every pair kept, same ids, same order
    order = use_order(original)
    recent = order[-2:]
    for tid in recent:
        assert after[tid] == before[tid]
    cleared = [tid for tid in order if is_stub(after[tid])]
    assert cleared and cleared == order[: len(cleared)]  # oldest first
    # the stub says what it was and how to get it back
    stub = after[cleared[0]]
    text = result_text(before[cleared[0]])
    assert "Read result for src/mod0_0.py" in stub
    assert memory_id(text) in stub and "re-run the tool" in stub
    assert " ".join(text.split())[:20] in stub  # a whitespace-collapsed preview
    # tool_use blocks untouched
    uses = lambda b: [x for m in b["messages"] if isinstance(m["content"], list) for x in m["content"] if x.get("type") == "tool_use"]  # noqa: E731
    assert uses(sent.body) == uses(original)
    # notes and event for memory and the TUI
    notes = sent.ctx.notes["cleared"]
    assert [n["tool_use_id"] for n in notes] == cleared and all(n["new"] for n in notes)
    assert notes[0]["text"] == text and notes[0]["memory_id"] == memory_id(text)
    (ev,) = sent.events("clearing")
    assert ev["cleared"] == len(cleared) and ev["tokens_freed"] > 1000 and set(ev["tools"]) <= {"Read", "Bash"}
    assert sent.ctx.tokens_out < sent.ctx.tokens_in - 1000
    h.close()


def test_exclude_tools_are_never_cleared(cw_home):
    h = harness(cw_home, exclude_tools=["Read"])
    body = anthropic_tool_loop(8, result_words=500)
    sent = h.send(ApiKind.ANTHROPIC, body)
    names = {b["id"]: b["name"] for m in body["messages"] if isinstance(m["content"], list) for b in m["content"] if b.get("type") == "tool_use"}
    after = results_of(sent.body)
    assert any(is_stub(c) for c in after.values())
    assert all(not is_stub(after[t]) for t, n in names.items() if n == "Read")
    h.close()


def test_clear_at_least_or_nothing(cw_home):
    body = anthropic_tool_loop(8, result_words=500)
    h = harness(cw_home, clear_at_least=10_000_000)
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert not sent.changed and sent.events("clearing") == []
    h.close()


def test_small_results_are_left_alone(cw_home):
    h = harness(cw_home, trigger_tokens=100, min_result_tokens=100_000)
    sent = h.send(ApiKind.ANTHROPIC, anthropic_tool_loop(8, result_words=500))
    assert not sent.changed
    h.close()


def test_stubs_are_reapplied_byte_for_byte_even_after_restart_and_below_the_trigger(cw_home):
    h = harness(cw_home)
    first = anthropic_tool_loop(8, result_words=500)
    s1 = h.send(ApiKind.ANTHROPIC, first)
    stubs1 = {t: c for t, c in results_of(s1.body).items() if is_stub(c)}
    assert stubs1
    # the conversation grows by a turn; the client moved its breakpoint
    grown = anthropic_tool_loop(9, result_words=500)
    s2 = h.send(ApiKind.ANTHROPIC, grown)
    after2 = results_of(s2.body)
    for t, c in stubs1.items():
        assert after2[t] == c
    assert [n for n in s2.ctx.notes["cleared"] if n["tool_use_id"] in stubs1 and n["new"]] == []
    # a restart, and settings that would not clear at all any more
    h.close()
    h2 = Harness(cw_home, overrides=settings_overrides(window=200_000, stages=STAGES,
                                                       clearing={"trigger_tokens": 10_000_000, "keep_recent": 2}))
    s3 = h2.send(ApiKind.ANTHROPIC, grown)
    after3 = results_of(s3.body)
    for t, c in stubs1.items():
        assert after3[t] == c
    assert orjson.dumps(s3.body) == orjson.dumps(s2.body)  # after a restart: the same bytes
    # from one request to the next, the messages before the first newly cleared result are identical
    new = [n["message_index"] for n in s2.ctx.notes["cleared"] if n["new"]]
    first_new = min(new) if new else len(first["messages"]) - 1
    assert first_new > 0
    assert s2.body["messages"][:first_new] == s1.body["messages"][:first_new]
    h2.close()


def test_a_result_the_client_changed_is_not_overwritten(cw_home):
    h = harness(cw_home)
    body = anthropic_tool_loop(8, result_words=500)
    s1 = h.send(ApiKind.ANTHROPIC, body)
    cleared = [t for t, c in results_of(s1.body).items() if is_stub(c)]
    again = copy.deepcopy(body)
    for m in again["messages"]:
        if isinstance(m["content"], list):
            for b in m["content"]:
                if b.get("type") == "tool_result" and b["tool_use_id"] == cleared[0]:
                    b["content"] = "[Old tool result content cleared]"  # Claude Code's own microcompact
    s2 = h.send(ApiKind.ANTHROPIC, again)
    assert results_of(s2.body)[cleared[0]] == "[Old tool result content cleared]"
    assert is_stub(results_of(s2.body)[cleared[1]])
    h.close()


@pytest.mark.parametrize("level,expect", [("NORMAL", False), ("REDUCED", False), ("MINIMAL", True)])
def test_budget_levels_lower_the_trigger(cw_home, level, expect):
    body = anthropic_tool_loop(8, result_words=500)
    h = harness(cw_home)
    total = h.rt.tokens.count_request(ApiKind.ANTHROPIC, body)
    h.apply({"clearing": {"trigger_tokens": int(total / 0.6)}})  # between 0.5x and 0.75x of it
    sent = h.send(ApiKind.ANTHROPIC, body, notes={"level": level})
    assert sent.changed is expect
    h.close()


def test_images_in_a_result_are_counted_and_named(cw_home):
    h = harness(cw_home, trigger_tokens=1000, clear_at_least=500, keep_recent=1)
    body = anthropic_tool_loop(3, result_words=50)
    shot = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    body["messages"][2]["content"][0]["content"] = [{"type": "text", "text": "screenshot of the app"}, shot]
    sent = h.send(ApiKind.ANTHROPIC, body)
    stub = results_of(sent.body)[body["messages"][2]["content"][0]["tool_use_id"]]
    assert is_stub(stub) and "1 image" in stub and memory_id("screenshot of the app") in stub
    h.close()


def test_openai_chat_tool_messages(cw_home):
    h = harness(cw_home)
    body = chat_tool_loop(8, result_words=500)
    original = copy.deepcopy(body)
    sent = h.send(ApiKind.OPENAI_CHAT, body)
    assert sent.changed, sent.outcome.reason
    assert sent.ctx.original == original
    tools_before = [m for m in original["messages"] if m["role"] == "tool"]
    tools_after = [m for m in sent.body["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tools_after] == [m["tool_call_id"] for m in tools_before]
    stubbed = [m for m in tools_after if is_stub(m["content"])]
    assert stubbed and "read_file result for src/mod0.py" in stubbed[0]["content"]
    assert tools_after[-1] == tools_before[-1] and tools_after[-2] == tools_before[-2]  # keep_recent = 2
    h.close()


def test_responses_function_call_outputs(cw_home):
    h = harness(cw_home, trigger_tokens=3000)
    body = responses_tool_loop(8, result_words=500)
    original = copy.deepcopy(body)
    sent = h.send(ApiKind.OPENAI_RESPONSES, body)
    assert sent.changed, sent.outcome.reason
    assert sent.ctx.original == original  # items are the client's dicts: copied, never mutated
    outs = [i for i in sent.body["input"] if i.get("type") == "function_call_output"]
    assert is_stub(outs[0]["output"]) and outs[0]["call_id"] == "fc_0_0"
    assert outs[-1] == [i for i in original["input"] if i.get("type") == "function_call_output"][-1]
    assert sent.body["instructions"] == original["instructions"]
    h.close()


def test_the_stub_text_is_deterministic_and_never_logs_auth(cw_home):
    from contextwarden.plugins.clearing import stub_text

    a = stub_text("Read", {"file_path": "src/app.py"}, "def main():\n    pass\n" * 50, 3120, 0)
    b = stub_text("Read", {"file_path": "src/app.py"}, "def main():\n    pass\n" * 50, 3120, 0)
    assert a == b
    assert a.startswith('[contextwarden cleared this Read result for src/app.py (3,120 tokens): "def main(): pass')
    assert f"Memory id {memory_id('def main():' + chr(10) + '    pass' + chr(10)) }" not in a  # id is of the whole text
    assert memory_id("def main():\n    pass\n" * 50) in a
    h = harness(cw_home)
    h.send(ApiKind.ANTHROPIC, anthropic_tool_loop(8, result_words=500))
    assert b"sk-test-secret" not in orjson.dumps([e.to_dict() for e in h.rt.bus.recent], default=str)
    h.close()


def test_memoised_fingerprints_and_stubs_are_the_plain_computation():
    import hashlib

    from contextwarden.plugins import clearing
    from contextwarden.wire.conversation import input_hint

    def plain_digest(text: str) -> str:
        ends = (text[:512] + "\0" + text[-512:]) if len(text) > 1024 else text
        return f"{len(text)}:" + hashlib.blake2b(ends.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()

    texts = ["", "short", "é\ud800 surrogate", "a" * 1024, "a" * 1025, "b" * 600 + "c" * 600, "b" * 600 + "d" * 600,
             "x" * 512 + "MIDDLE" + "y" * 512, "x" * 512 + "middle" + "y" * 512]
    for _ in range(2):
        for t in texts:
            assert clearing._digest("".join(list(t))) == plain_digest(t)
    for text in ["def main():\n    pass\n" * 50, "", "z" * (clearing.STUB_MEMO_CHARS + 1), "  \n "]:
        for tool, inp, toks, imgs in [("Read", {"file_path": "src/app.py"}, 3120, 0), ("Bash", {"command": "ls"}, 3120, 2),
                                      ("Read", {"file_path": "src/other.py"}, 3120, 0), ("Read", {"file_path": "src/app.py"}, 99, 1)]:
            want = clearing._stub_text(tool, input_hint(inp, 60), text, toks, imgs)
            assert clearing.stub_text(tool, inp, text, toks, imgs) == want
            assert clearing.stub_text(tool, dict(inp), "".join(list(text)), toks, imgs) == want


def test_a_step_that_cannot_reach_clear_at_least_computes_no_stubs(cw_home, monkeypatch):
    from contextwarden.plugins import clearing

    h = harness(cw_home, trigger_tokens=1_000, keep_recent=2, clear_at_least=10**9)
    made = []
    real = clearing.stub_text
    monkeypatch.setattr(clearing, "stub_text", lambda *a: made.append(a) or real(*a))
    body = anthropic_tool_loop(8, result_words=500)
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert not sent.changed and made == []
    h.close()


def test_results_the_model_has_not_read_are_never_cleared(cw_home):
    h = harness(cw_home, keep_recent=0, trigger_tokens=1000)
    body = anthropic_tool_loop(8, result_words=500)
    body["messages"].pop()  # the request ends with tool results: the model has not seen them yet
    body["messages"].pop()
    last = body["messages"][-1]
    assert last["content"][0]["type"] == "tool_result"
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert sent.changed and sent.body["messages"][-1] == last  # keep_recent 0 clears the rest, not these
    # the conversation goes on, the client then rewinds to this point: still not cleared
    grown = h.send(ApiKind.ANTHROPIC, anthropic_tool_loop(8, result_words=500))
    assert all(is_stub(results_of(grown.body)[b["tool_use_id"]]) for b in last["content"])  # read by now: cleared
    again = h.send(ApiKind.ANTHROPIC, body)
    assert again.body["messages"][-1] == last
    h.close()


# ---------------------------------------------------------------------------------------------------
# clear_tool_inputs: the large input values of cleared calls (Anthropic's ``clear_tool_inputs``)

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from contextwarden.wire.dialects import validate_rewrite  # noqa: E402
from tests.support.stages import words  # noqa: E402
from tests.support.upstream import strict_problems  # noqa: E402

INPUT_STUB = "[contextwarden cleared this input value ("


def write_loop(turns: int, content_words: int = 800, thinking: bool = True, current_turn_thinking: bool = False,
               seed: int = 0) -> dict:
    """Turns of Write (a whole file body in its input, a one-line result) and Read (a large result)."""
    msgs: list[dict] = []
    for t in range(turns):
        msgs.append({"role": "user", "content": [{"type": "text", "text": f"Task {t}: write src/gen{t}.py, then read it back."}]})
        first: list[dict] = []
        if thinking:
            first.append({"type": "thinking", "thinking": f"Write the module for task {t}.", "signature": f"sig-{seed}-{t}"})
        body = f"# module {t}\n" + words(content_words, seed + t)
        msgs.append({"role": "assistant", "content": first + [
            {"type": "text", "text": f"Writing src/gen{t}.py."},
            {"type": "tool_use", "id": f"toolu_w{seed}_{t}", "name": "Write", "input": {"file_path": f"src/gen{t}.py", "content": body}}]})
        msgs.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_w{seed}_{t}",
                                                  "content": f"File created successfully at: src/gen{t}.py"}]})
        msgs.append({"role": "assistant", "content": [{"type": "tool_use", "id": f"toolu_r{seed}_{t}", "name": "Read",
                                                       "input": {"file_path": f"src/gen{t}.py"}}]})
        msgs.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_r{seed}_{t}", "content": body}]})
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": f"Task {t} done."}]})
    msgs.append({"role": "user", "content": [{"type": "text", "text": "Now the last one.", "cache_control": {"type": "ephemeral"}}]})
    if current_turn_thinking:  # the current turn: an assistant message with thinking and a large Write, answered
        body = "# current\n" + words(content_words, seed + 99)
        msgs.append({"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Write the last module.", "signature": f"sig-{seed}-cur"},
            {"type": "tool_use", "id": f"toolu_cur{seed}", "name": "Write", "input": {"file_path": "src/last.py", "content": body}}]})
        msgs.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_cur{seed}", "content": "File created."}]})
        msgs.append({"role": "assistant", "content": [{"type": "tool_use", "id": f"toolu_ls{seed}", "name": "Bash",
                                                       "input": {"command": "ls", "description": "x" * 400}}]})
        msgs.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_ls{seed}", "content": "last.py"}]})
    return {"model": "claude-sonnet-4-5", "max_tokens": 4096, "stream": True,
            "system": [{"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}}],
            "tools": [{"name": n, "description": n, "input_schema": {"type": "object"}} for n in ("Write", "Read", "Bash")],
            "messages": msgs}


def uses_of(body: dict) -> dict[str, dict]:
    return {b["id"]: b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"] if b.get("type") == "tool_use"}


def test_tool_inputs_are_kept_by_default(cw_home):
    h = harness(cw_home)
    body = write_loop(6)
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert sent.changed  # the Read results are cleared
    assert uses_of(sent.body) == uses_of(body)
    assert "inputs_cleared" not in sent.events("clearing")[0]
    h.close()


def test_large_input_values_of_cleared_calls_become_stubs(cw_home):
    h = harness(cw_home, clear_tool_inputs=True, exclude_tools=["Bash"])
    body = write_loop(6)
    original = copy.deepcopy(body)
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert sent.outcome.reason == "rewritten"
    assert sent.ctx.original == original  # the client's dicts are never mutated
    assert validate_rewrite(ApiKind.ANTHROPIC, sent.body, original) == []
    assert strict_problems("/v1/messages", sent.body) == []
    before, after = uses_of(original), uses_of(sent.body)
    assert list(before) == list(after)  # same calls, same ids, same order
    stubbed = [tid for tid in before if after[tid] != before[tid]]
    assert stubbed and all(tid.startswith("toolu_w") for tid in stubbed)
    order = list(before)
    recent = order[-2:]
    assert not set(stubbed) & set(recent)  # keep_recent: the two latest calls keep their inputs
    for tid in stubbed:
        old, new = before[tid]["input"], after[tid]["input"]
        assert isinstance(new, dict) and list(new) == list(old)  # still an object, same keys
        assert new["file_path"] == old["file_path"]  # small values kept as they were
        stub = new["content"]
        assert stub.startswith(INPUT_STUB) and memory_id(old["content"]) in stub
        assert " ".join(old["content"].split())[:20] in stub  # a preview
        assert len(stub) < len(old["content"]) // 10
    # the Write results (one short line) are not stubbed; thinking blocks untouched everywhere
    assert all(not is_stub(c) for tid, c in results_of(sent.body).items() if tid.startswith("toolu_w"))
    thinking = lambda b: [x for m in b["messages"] if isinstance(m["content"], list) for x in m["content"] if x.get("type") == "thinking"]  # noqa: E731
    assert thinking(sent.body) == thinking(original)
    # memory gets each replaced value under the id its stub names; the event counts inputs separately
    notes = [n for n in sent.ctx.notes["cleared"] if n.get("kind") == "tool_input"]
    assert {n["tool_use_id"] for n in notes} == set(stubbed)
    assert all(n["memory_id"] == memory_id(n["text"]) and n["new"] for n in notes)
    ev = sent.events("clearing")[0]
    assert ev["inputs_cleared"] == len(stubbed)
    assert set(ev["ids"]) >= {n["memory_id"] for n in notes}
    assert sent.ctx.notes["clearing"]["freed"] == ev["tokens_freed"] > 0
    h.close()


def test_input_stubs_are_reapplied_byte_for_byte_and_survive_a_restart(cw_home):
    h = harness(cw_home, clear_tool_inputs=True)
    first = h.send(ApiKind.ANTHROPIC, write_loop(6))
    stubbed = {tid: u["input"] for tid, u in uses_of(first.body).items() if u["input"] != uses_of(write_loop(6))[tid]["input"]}
    assert stubbed
    h.restart()
    h.apply({"clearing": {"trigger_tokens": 10_000_000}})  # below the trigger now: only re-application
    grown = write_loop(7)
    again = h.send(ApiKind.ANTHROPIC, grown)
    after = uses_of(again.body)
    for tid, inp in stubbed.items():
        assert orjson.dumps(after[tid]["input"]) == orjson.dumps(inp)
    assert all(not n["new"] for n in again.ctx.notes["cleared"])
    h.close()


def test_latest_assistant_message_and_current_turn_thinking_keep_their_inputs(cw_home):
    h = harness(cw_home, clear_tool_inputs=True, keep_recent=0, trigger_tokens=2000, clear_at_least=100)
    body = write_loop(4, current_turn_thinking=True)
    sent = h.send(ApiKind.ANTHROPIC, body)
    assert sent.outcome.reason == "rewritten"
    assert validate_rewrite(ApiKind.ANTHROPIC, sent.body, body) == []
    before, after = uses_of(body), uses_of(sent.body)
    assert after["toolu_cur0"] == before["toolu_cur0"]  # current turn, in a message with thinking
    assert after["toolu_ls0"] == before["toolu_ls0"]  # the latest assistant message
    assert any(after[t] != before[t] for t in before if t.startswith("toolu_w"))  # earlier turns: cleared
    assert sent.body["messages"][-4:] == body["messages"][-4:]
    h.close()


def test_chat_and_responses_arguments_stay_a_json_object(cw_home):
    h = harness(cw_home, clear_tool_inputs=True)
    chat = {"model": "gpt-4o", "messages": [{"role": "system", "content": "Be brief."}]}
    items: list = []
    for t in range(6):
        content = words(700, t)
        args = orjson.dumps({"path": f"out{t}.txt", "content": content}).decode()
        chat["messages"] += [{"role": "user", "content": f"write out{t}.txt"},
                             {"role": "assistant", "content": None, "tool_calls": [
                                 {"id": f"call_{t}", "type": "function", "function": {"name": "write_file", "arguments": args}}]},
                             {"role": "tool", "tool_call_id": f"call_{t}", "content": "ok " + words(400, t)},
                             {"role": "assistant", "content": f"Wrote out{t}.txt."}]
        items += [{"role": "user", "content": f"write out{t}.txt"},
                  {"type": "function_call", "call_id": f"fc_{t}", "name": "write_file", "arguments": args},
                  {"type": "function_call_output", "call_id": f"fc_{t}", "output": "ok " + words(400, t)},
                  {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": f"Wrote out{t}.txt."}]}]
    chat["messages"].append({"role": "user", "content": "next"})
    items.append({"role": "user", "content": "next"})
    resp = {"model": "gpt-4o", "input": items, "instructions": "Be brief."}
    for api, body, route in ((ApiKind.OPENAI_CHAT, chat, "/v1/chat/completions"), (ApiKind.OPENAI_RESPONSES, resp, "/v1/responses")):
        original = copy.deepcopy(body)
        sent = h.send(api, body)
        assert sent.outcome.reason == "rewritten", api
        assert sent.ctx.original == original
        assert validate_rewrite(api, sent.body, original) == [] and strict_problems(route, sent.body) == []
        if api is ApiKind.OPENAI_CHAT:
            args = [tc["function"]["arguments"] for m in sent.body["messages"] for tc in m.get("tool_calls") or []]
        else:
            args = [it["arguments"] for it in sent.body["input"] if it.get("type") == "function_call"]
        parsed = [orjson.loads(a) for a in args]
        assert all(isinstance(p, dict) and set(p) == {"path", "content"} for p in parsed)
        stubbed = [p for p in parsed if p["content"].startswith(INPUT_STUB)]
        assert stubbed and all(p["path"].startswith("out") for p in stubbed)
        assert not parsed[-1]["content"].startswith(INPUT_STUB) and not parsed[-2]["content"].startswith(INPUT_STUB)
    h.close()


@pytest.fixture(scope="module")
def input_bench(tmp_path_factory):
    h = Harness(tmp_path_factory.mktemp("inputs") / "cw-home",
                overrides=settings_overrides(window=200_000, stages=["strip", "clearing", "compaction"],
                                             clearing={"clear_tool_inputs": True, "min_result_tokens": 20}))
    yield h
    h.close()


_examples = iter(range(10**9))
_fired: dict[str, int] = {"examples": 0, "inputs": 0, "compaction": 0}


@settings(max_examples=int(__import__("os").environ.get("CW_HYPOTHESIS_EXAMPLES", "60")), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(turns=st.integers(1, 6), content=st.sampled_from([30, 200, 900]), thinking=st.booleans(), current=st.booleans(),
       keep=st.integers(0, 3), trigger=st.sampled_from([500, 3000, 12000]), at_least=st.sampled_from([10, 800, 4000]),
       exclude=st.sampled_from([[], ["Write"], ["Read"]]), window=st.sampled_from([3000, 8000, 200_000]))
# two cases that stub inputs and compact whatever the draws (in one full-suite run the random draws stubbed none)
@example(turns=5, content=900, thinking=False, current=False, keep=0, trigger=500, at_least=4000, exclude=[], window=3000)
@example(turns=5, content=900, thinking=True, current=False, keep=1, trigger=500, at_least=4000, exclude=[], window=3000)
def test_clearing_inputs_never_produces_an_invalid_body(input_bench, turns, content, thinking, current, keep, trigger,
                                                        at_least, exclude, window):
    """With clear_tool_inputs on (and compaction after it), every rewritten body passes the validator and
    the stand-in's strict check, inputs stay objects, only cleared calls' large values change, excluded
    tools and the latest assistant message are untouched; the next request re-applies the same bytes."""
    n = next(_examples)
    s = load_settings_for(input_bench, window, keep, trigger, at_least, exclude)
    body = write_loop(turns, content_words=content, thinking=thinking, current_turn_thinking=current, seed=n)
    original = copy.deepcopy(body)
    sent = input_bench.send(ApiKind.ANTHROPIC, body, settings=s, headers={"x-contextwarden-session": f"inputs-{n}"})
    assert sent.outcome.reason in ("unchanged", "rewritten"), sent.outcome.reason
    assert sent.ctx.original == original
    if not sent.changed:
        return
    assert validate_rewrite(ApiKind.ANTHROPIC, sent.body, original) == []
    assert strict_problems("/v1/messages", sent.body) == []
    before, after = uses_of(original), uses_of(sent.body)
    _fired["examples"] += 1
    _fired["inputs"] += any(after[t] != before[t] for t in after)
    _fired["compaction"] += any(e.get("applied") for e in sent.events("compaction"))
    last_asst = next(m for m in reversed(original["messages"]) if m["role"] == "assistant")
    assert next(m for m in reversed(sent.body["messages"]) if m["role"] == "assistant") == last_asst
    for tid, u in after.items():
        assert isinstance(u["input"], dict) and list(u["input"]) == list(before[tid]["input"])
        if u["input"] != before[tid]["input"]:
            assert u["name"] not in exclude
            for k, v in u["input"].items():
                assert v == before[tid]["input"][k] or (isinstance(v, str) and v.startswith(INPUT_STUB))
    # the next request (one exchange later) gets the same stubs
    grown = copy.deepcopy(original)
    grown["messages"] += [{"role": "assistant", "content": [{"type": "text", "text": "Done."}]},
                          {"role": "user", "content": [{"type": "text", "text": "Next."}]}]
    nxt = input_bench.send(ApiKind.ANTHROPIC, grown, settings=s, headers={"x-contextwarden-session": f"inputs-{n}"})
    assert nxt.outcome.reason in ("unchanged", "rewritten")
    if nxt.changed:
        assert validate_rewrite(ApiKind.ANTHROPIC, nxt.body, grown) == []
        assert strict_problems("/v1/messages", nxt.body) == []
        again = uses_of(nxt.body)
        for tid, u in after.items():
            if u["input"] != before[tid]["input"] and tid in again:
                assert orjson.dumps(again[tid]["input"]) == orjson.dumps(u["input"])


def test_the_input_examples_make_input_clearing_and_compaction_fire(input_bench):
    """Guard against a vacuous property (runs after it): inputs were stubbed, and compaction ran on them.
    (``input_bench`` puts it in the property's xdist group: on another worker it would see no examples.)"""
    assert _fired["inputs"] > 0 and _fired["compaction"] > 0, _fired


_settings_cache: dict = {}


def load_settings_for(h: Harness, window: int, keep: int, trigger: int, at_least: int, exclude: list[str]):
    from contextwarden.settings import load_settings

    key = (window, keep, trigger, at_least, tuple(exclude))
    if key not in _settings_cache:
        o = copy.deepcopy(h.overrides)
        o["tokens"] = {"context_window": window}
        o["clearing"] = {"clear_tool_inputs": True, "min_result_tokens": 20, "keep_recent": keep,
                         "trigger_tokens": trigger, "clear_at_least": at_least, "exclude_tools": exclude}
        o["compaction"] = {"protect_recent_turns": 1, "min_span_tokens": 50}
        _settings_cache[key] = load_settings("default", h.home, overrides=o)
    return _settings_cache[key]


def _growing_session(n: int, big: bool):
    """Bodies of one Claude-Code-like session: each the previous plus a tool step or a person's message,
    the cache breakpoint moved to the newest message, some tool inputs large (a Write's body)."""
    body = anthropic_tool_loop(6, result_words=400)
    for k, m in enumerate(body["messages"]):
        if m["role"] == "assistant" and big and k % 3 == 1:
            for b in m["content"]:
                if b.get("type") == "tool_use":
                    b["input"] = {**b["input"], "content": "x = 1\n" * 400}
    out = [body]
    for i in range(n):
        prev = out[-1]
        last = dict(prev["messages"][-1])
        last["content"] = [{k: v for k, v in b.items() if k != "cache_control"} for b in last["content"]]
        if i % 3 == 2:
            new = [{"role": "assistant", "content": [{"type": "text", "text": f"Done {i}."}]},
                   {"role": "user", "content": [{"type": "text", "text": f"Next task {i}, please."}]}]
        else:
            tid = f"toolu_g{i}"
            new = [{"role": "assistant", "content": [{"type": "tool_use", "id": tid, "name": "Read",
                                                      "input": {"file_path": f"src/g{i}.py"}}]},
                   {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tid,
                                                 "content": f"def g{i}():\n    " + "return 1\n    " * 300}]}]
        new[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
        out.append({**prev, "messages": prev["messages"][:-1] + [last] + new})
    return out


@pytest.mark.parametrize("inputs", [False, True])
def test_what_a_request_hands_on_changes_nothing_sent(cw_home, monkeypatch, inputs):
    """Each request leaves what clearing worked out about its history to the next (its slot in the
    conversation: slots, the re-applied stubs) and the conversation keeps its typed messages and edited
    copies. The bodies sent upstream, and what the clearing events say, are those of a proxy that hands
    nothing on (carries off, the conversations forgotten before every request)."""
    from contextwarden.wire.history import Conversations, History

    bodies = _growing_session(14, big=inputs)
    cfg = {"trigger_tokens": 6000, "clear_at_least": 800, "keep_recent": 2, "clear_tool_inputs": inputs}

    def run(home, hand_on: bool):
        h = harness(home, **cfg)
        sent = []
        for b in bodies:
            if not hand_on:
                h.rt.conversations = Conversations()
                h.rt.recent.clear()
            s = h.send(ApiKind.ANTHROPIC, copy.deepcopy(b))
            ev = [(e["cleared"], e["new"], e["tokens_freed"], e.get("inputs_cleared")) for e in s.events("clearing")]
            sent.append((s.outcome.body, s.outcome.reason, ev))
        h.close()
        return sent

    used: list = []
    real = History.carried

    def spy(self, key):
        got = real(self, key)
        used.append((key, got is not None))
        return got

    monkeypatch.setattr(History, "carried", spy)
    with_carry = run(cw_home / "a", True)
    assert sum(hit for key, hit in used if key[0] == "clearing") >= 8, "clearing's carry was not used"
    monkeypatch.setattr(History, "carried", lambda self, key: None)
    without = run(cw_home / "b", False)
    assert [r for _, r, _ in with_carry].count("rewritten") >= 10
    assert any(e and e[0][1] for _, _, e in with_carry[3:]), "a new clearing step after the first requests"
    if inputs:
        assert any(e and e[0][3] for _, _, e in with_carry), "input stubs applied"
    for i, (a, b) in enumerate(zip(with_carry, without)):
        assert a == b, f"request {i}: handing on changed what was sent"


@pytest.mark.parametrize("cold", [{"ago": 3600}, {"ago": 60, "model": "claude-opus-4-20250514"}], ids=["expired", "model switch"])
def test_a_free_moment_clears_below_the_trigger(cw_home, cold):
    """The session's cached prefix has expired (its previous request came more than the cache's
    lifetime ago, or went to another model, whose cache holds nothing of this one's): whatever is sent
    is written again, so a step costs nothing extra and goes below the trigger, of any size (issue 38's
    free moments)."""
    body = anthropic_tool_loop(8, result_words=500)
    h = harness(cw_home, trigger_tokens=1_000_000, clear_at_least=10_000_000, cold_trigger_factor=0.001)
    warm = h.send(ApiKind.ANTHROPIC, body)
    assert not warm.changed  # no previous request: not a free moment
    assert body["model"] != cold.get("model")
    key = session_key(warm.ctx)
    state_cache(h.rt).put(NS_SEEN, key, {"last": time.time() - 60, "model": warm.ctx.model})
    assert not h.send(ApiKind.ANTHROPIC, body).changed  # a minute ago, the same model: the prefix is still cached
    state_cache(h.rt).put(NS_SEEN, key, {"last": time.time() - cold["ago"], "model": cold.get("model", warm.ctx.model)})
    cold = h.send(ApiKind.ANTHROPIC, body)
    assert cold.changed and any(is_stub(c) for c in results_of(cold.body).values())
    (ev,) = cold.events("clearing")
    assert ev["new"] > 0
    h.close()


def test_a_new_turn_that_drops_thinking_is_a_free_moment_from_where_the_prompt_changes(cw_home):
    """A model that drops earlier turns' thinking (before Opus 4.5) writes the prompt again from the
    previous turn's first thinking block when a new user message arrives: a step from there on costs
    nothing extra, so it goes below ``clear_at_least`` there, and no further back (within the provider's
    20-block lookback; further back the whole prompt is written again, unless the breakpoints stage marks
    the previous turn's start). Such a step takes the results of
    the tools whose output goes stale (``stale_after``: Bash here), not the Reads. No thinking, or a model
    that keeps it: no free moment."""
    def cleared(**body_kw) -> list[str]:
        h = harness(cw_home, trigger_tokens=1_000, clear_at_least=10_000_000, keep_recent=0, stale_after={"Bash": 2})
        got = h.send(ApiKind.ANTHROPIC, anthropic_tool_loop(8, result_words=400, **body_kw))
        h.close()
        return sorted(tid for tid, c in results_of(got.body).items() if is_stub(c))

    assert cleared(seed=0) == ["toolu_0_16"]  # the last turn's results only (its Bash; its Read stays)
    assert len(cleared(seed=3, tools_per_turn=12)) == 8 * 6  # a turn of 12 calls: past the lookback, every Bash
    # with the breakpoints stage, the previous turn's start is a breakpoint: the provider reads up to it however
    # far back it is, so the free moment starts after it (the last turn's 6 Bash results), not at the start
    h = Harness(cw_home / "marked", overrides=settings_overrides(window=200_000, stages=[*STAGES, "breakpoints"], clearing={
        "trigger_tokens": 1_000, "clear_at_least": 10_000_000, "keep_recent": 0, "keep_edited_reads": 0,
        "working_set_tokens": 0, "stale_after": {"Bash": 2}}))
    got = h.send(ApiKind.ANTHROPIC, anthropic_tool_loop(8, result_words=400, seed=3, tools_per_turn=12))
    h.close()
    assert sorted(tid for tid, c in results_of(got.body).items() if is_stub(c)) == [f"toolu_3_{n}" for n in (86, 88, 90, 92, 94, 96)]
    assert cleared(seed=1, thinking=False) == []
    body = anthropic_tool_loop(8, result_words=400, seed=2)
    body["model"] = "claude-opus-4-5"
    h = harness(cw_home, trigger_tokens=1_000, clear_at_least=10_000_000, keep_recent=0)
    assert not h.send(ApiKind.ANTHROPIC, body).changed
    h.close()


def bash_loop(calls: int, words_each: int = 300) -> dict:
    """A session of one user message and ``calls`` Bash calls, each answered by a long output."""
    msgs: list[dict] = [{"role": "user", "content": "run the server until it starts"}]
    for i in range(calls):
        msgs.append({"role": "assistant", "content": [{"type": "tool_use", "id": f"toolu_b{i}", "name": "Bash",
                                                       "input": {"command": "mix phx.server"}}]})
        msgs.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_b{i}",
                                                  "content": f"run {i}: " + " ".join(f"warning{i}_{k}" for k in range(words_each))}]})
    msgs[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
    return {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": msgs,
            "system": [{"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}}]}


def test_a_stale_result_is_cleared_below_the_trigger_when_the_step_pays(cw_home):
    """``stale_after``: a Bash result once N later Bash calls followed it is cleared by a step of stale
    results alone, below the trigger and inside keep_recent, when it is within the provider's lookback
    of the end (else the whole conversation is written again) and what it frees times the requests so
    far outweighs what it re-writes; the newest N stay. In a short session the step does not pay, and a
    step frees at least ``stale_at_least``."""
    h = harness(cw_home, trigger_tokens=1_000_000, keep_recent=100, stale_after={"Bash": 3}, stale_at_least=500)
    got = h.send(ApiKind.ANTHROPIC, bash_loop(40))
    cleared = sorted(int(tid.removeprefix("toolu_b")) for tid, c in results_of(got.body).items() if is_stub(c))
    assert cleared and max(cleared) == 40 - 4  # the newest 3 (and the unseen last one) stay
    assert min(cleared) >= 40 - 10  # 20 blocks: the last 10 calls and results
    (ev,) = got.events("clearing")
    assert ev["new"] == len(cleared) and ev["tools"] == ["Bash"]
    again = h.send(ApiKind.ANTHROPIC, bash_loop(40))  # the next request re-applies the same stubs byte for byte
    assert results_of(again.body) == results_of(got.body)
    h.close()
    for home, calls, at_least in ((cw_home / "short", 6, 500), (cw_home / "least", 40, 10_000_000)):
        h = harness(home, trigger_tokens=1_000_000, keep_recent=100, stale_after={"Bash": 3}, stale_at_least=at_least)
        assert not h.send(ApiKind.ANTHROPIC, bash_loop(calls)).changed
        h.close()
