"""The inspector's body diff: by message and by block, for the rewrites the stages make."""

from __future__ import annotations

from contextwarden.tui.diff import diff_bodies


def msgs(*texts, role_cycle=("user", "assistant")):
    return [{"role": role_cycle[i % 2], "content": t} for i, t in enumerate(texts)]


def test_compaction_shows_removed_messages_beside_the_summary():
    original = {"model": "m", "messages": msgs("q1", "a1", "q2", "a2", "q3", "a3", "q4")}
    summary = {"role": "user", "content": "[summary of 4 earlier messages]"}
    rewritten = {"model": "m", "messages": [summary, *original["messages"][4:]]}
    d = diff_bodies(original, rewritten, context=None)
    kinds = [(r.kind, r.label) for r in d.rows]
    assert kinds[:4] == [("removed", "1 user"), ("removed", "2 assistant"), ("removed", "3 user"), ("removed", "4 assistant")]
    assert ("added", "1 user") in kinds and d.messages_before == 7 and d.messages_after == 4 and d.changed
    added = next(r for r in d.rows if r.kind == "added")
    assert added.right[0].text == "[summary of 4 earlier messages]" and added.right[0].state == "added"


def test_cleared_tool_result_and_injected_memory_are_block_changes():
    tool = {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {"path": "a.py"}}]}
    original = {"messages": [{"role": "user", "content": "read it"}, tool,
                             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "x" * 500}]},
                             {"role": "user", "content": "now?"}]}
    rewritten = {"messages": [original["messages"][0], tool,
                              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "[cleared]"}]},
                              {"role": "user", "content": [{"type": "text", "text": "now?"}, {"type": "text", "text": "<memory/>"}]}]}
    d = diff_bodies(original, rewritten, context=0)
    assert [r.kind for r in d.rows] == ["same", "changed", "changed"]
    assert d.rows[0].count == 2  # the untouched start is one collapsed row
    cleared = d.rows[1]
    assert cleared.left[0].state == cleared.right[0].state == "changed" and cleared.right[0].text == "t1: [cleared]"
    assert len(cleared.left[0].text) <= 240  # long content is cut for the view
    memory = d.rows[2]
    assert [(b.text, b.state) for b in memory.right] == [("now?", "same"), ("<memory/>", "added")]


def test_unchanged_body_and_top_level_fields():
    body = {"model": "m", "system": "s", "messages": msgs("hi")}
    same = diff_bodies(body, None, context=None)
    assert not same.changed and [r.kind for r in same.rows] == ["same"]
    other = diff_bodies(body, {**body, "system": "s2"}, context=None)
    assert other.rows[0].kind == "field" and other.rows[0].label == "system"


def test_openai_shapes():
    original = {"messages": [{"role": "user", "content": "weather?"},
                             {"role": "assistant", "content": None, "tool_calls": [
                                 {"id": "c1", "type": "function", "function": {"name": "get", "arguments": "{}"}}]},
                             {"role": "tool", "tool_call_id": "c1", "content": "sunny " * 100}]}
    rewritten = {"messages": original["messages"][:2] + [{"role": "tool", "tool_call_id": "c1", "content": "[cleared]"}]}
    d = diff_bodies(original, rewritten, context=None)
    assert d.rows[1].left[0].kind == "tool_call" and "get(c1)" in d.rows[1].left[0].text
    assert d.rows[2].kind == "changed" and d.rows[2].right[0].text == "[cleared]"
    responses = diff_bodies({"input": "hello"}, {"input": [{"role": "user", "content": "hello"}]}, context=None)
    assert responses.rows and responses.messages_before == responses.messages_after == 1
