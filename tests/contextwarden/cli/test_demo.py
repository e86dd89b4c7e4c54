"""``contextwarden demo``'s stand-in upstream answers what a real client sends it, as the proxy passes it on:
a streamed request as Anthropic's event stream, a message carrying memory's block by the person's own words,
and a body it cannot read with an error in the API's shape (not a dropped connection, which the proxy reports
as an unreachable upstream)."""

from __future__ import annotations

import anthropic
import httpx

from contextwarden.cli.demo import path_of, stand_in
from contextwarden.memory.inject import render_block
from contextwarden.memory.items import MemoryItem


def test_the_sdk_streams_an_answer_and_a_tool_call_from_the_stand_in():
    with stand_in() as url:
        client = anthropic.Anthropic(base_url=url, api_key="demo-key")
        # (Claude Code 2.1 ends its messages with one of role "system": the list of its agents)
        asked = [{"role": "user", "content": "Read module 03 and tell me what it does."},
                 {"role": "system", "content": "Available agent types for the Agent tool: ..."}]
        with client.messages.stream(model="claude-sonnet-4-6", max_tokens=64, messages=asked) as s:
            msg = s.get_final_message()
        assert msg.stop_reason == "tool_use" and msg.content[0].type == "tool_use"
        assert msg.content[0].input == {"file_path": path_of(3)}
        with client.messages.stream(model="claude-sonnet-4-6", max_tokens=64,
                                    messages=[{"role": "user", "content": "Which file computed the totals?"}]) as s:
            text = "".join(s.text_stream)
        assert path_of(1) in text


def test_a_memory_block_in_the_message_is_not_read_as_the_persons_words():
    recalled = MemoryItem(text='"""module 07: totals and ledgers of region 7."""', session="s0", tenant="t", turn=1,
                          role="tool", kind="tool_result")
    content = [{"type": "text", "text": "Which file computed the totals?"}, {"type": "text", "text": render_block([recalled])}]
    assert "module 07" in content[1]["text"]
    with stand_in() as url:
        msg = anthropic.Anthropic(base_url=url, api_key="demo-key").messages.create(
            model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": content}])
    assert msg.stop_reason == "end_turn" and path_of(1) in msg.content[0].text


def test_a_body_it_cannot_read_gets_the_apis_error_shape():
    with stand_in() as url:
        r = httpx.post(url + "/v1/messages", content=b"[1, 2", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
