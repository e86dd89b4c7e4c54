"""The Responses transcript (what compaction summarises and memory stores) sorts item types it has no
rule of its own for by the dialect's list of assistant items: a new item type never breaks the walk."""

from contextwarden.wire.dialects import OPENAI_RESPONSES


def test_unknown_and_assistant_side_items_of_a_responses_history():
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "find the bug"}]},
        {"type": "web_search_call", "id": "ws_1", "status": "completed"},  # an assistant-side item ending in _call
        {"type": "compaction_summary", "id": "cs_1", "encrypted_content": "gAAAA"},  # an item type from the future
        {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": "{\"cmd\": \"ls\"}"},
        {"type": "function_call_output", "call_id": "c1", "output": "a.py\nb.py"},
    ]
    turns = OPENAI_RESPONSES.transcript(items)
    assert [t.role for t in turns] == ["user", "assistant", "user", "assistant", "tool"]
    assert turns[-1].parts[0].kind == "tool_result" and turns[-1].parts[0].text == "a.py\nb.py"
    assert turns[-1].parts[0].tool == "shell"
