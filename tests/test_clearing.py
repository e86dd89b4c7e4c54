"""The ``clearing`` stage through the real pipeline (parse → stages → validator → bytes)."""

from __future__ import annotations

import copy

import orjson
import pytest

from contextwarden.conversation import result_text
from contextwarden.memory.ids import memory_id
from contextwarden.models.base import ApiKind

from .support.stages import Harness, anthropic_tool_loop, chat_tool_loop, responses_tool_loop, settings_overrides

STAGES = ["strip", "clearing"]


def harness(home, **clearing) -> Harness:
    cfg = {"trigger_tokens": 8000, "clear_at_least": 1000, "keep_recent": 2}
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
