"""The response-stream reader: SSE framing, content decoding, per-API assembly, robustness.

Streams are built from the event shapes the providers send; where an official SDK ships its own
accumulator (anthropic's ``accumulate_event``, openai's ``ChatCompletionStreamState``) it is the
oracle the assembled message is checked against.
"""

from __future__ import annotations

import copy
import gzip
import json
import zlib

import orjson
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy.net import encoding as mitm_encoding

from contextwarden.models.base import ApiKind
from contextwarden.wire.streams import AssembledTurn, Usage
from contextwarden.wire.streams import tap as tap_module
from contextwarden.wire.streams.tap import ResponseTap
from tests.support.sdk import anthropic, openai, openai_chat_streaming

SSE = "text/event-stream"
JSON = "application/json"
NDJSON = "application/x-ndjson"
A, CHAT, RESP, OLLAMA = ApiKind.ANTHROPIC, ApiKind.OPENAI_CHAT, ApiKind.OPENAI_RESPONSES, ApiKind.OLLAMA_CHAT


# -- building wire bytes ---------------------------------------------------------------------

def sse(events: list[tuple[str | None, dict | str]], eol: str = "\n") -> bytes:
    """Serialise (event name, data) pairs the way providers do; ensure_ascii=False keeps é/日本/🙂 as raw UTF-8."""
    out = []
    for name, data in events:
        payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
        lines = ([f"event: {name}"] if name else []) + [f"data: {payload}"]
        out.append(eol.join(lines) + eol + eol)
    return "".join(out).encode()


def ndjson(objs: list[dict]) -> bytes:
    return b"".join(json.dumps(o, ensure_ascii=False).encode() + b"\n" for o in objs)


# how a stream is read: as each chunk comes, or held and read at the end (the proxy's way when no
# one reads it live), or held and read in small batches (batch boundaries at chunk boundaries)
MODES = {"live": {"live": True}, "deferred": {}, "batches": {"live": False, "batch": 7}}


def run(api, data: bytes, ctype: str = SSE, enc: str | None = None, chunks: list[bytes] | None = None,
        on_event=None, error: str | None = None, mode: str = "deferred") -> tuple[ResponseTap, AssembledTurn]:
    tap = ResponseTap(api, ctype, enc, on_event, **MODES[mode])
    for c in chunks if chunks is not None else [data]:
        tap.feed(c)
    return tap, tap.finish(error)


def split_at(data: bytes, cuts) -> list[bytes]:
    cuts = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *cuts, len(data)]
    return [data[i:j] for i, j in zip(bounds, bounds[1:])]


def tricky_cuts(data: bytes) -> list[int]:
    """Positions inside multi-byte UTF-8 characters and inside CRLF / blank-line delimiters."""
    inside_char = [i for i, b in enumerate(data) if 0x80 <= b < 0xC0]  # continuation bytes
    inside_eol = [i for i in range(1, len(data)) if data[i - 1:i + 1] in (b"\r\n", b"\n\r", b"\n\n", b"\r\r")]
    return inside_char + inside_eol


# -- Anthropic fixtures ----------------------------------------------------------------------

TEXT_PIECES = ["Okay", " — let me check the weather in Zürich", " for you. Café ", "日本", " 🙂"]
TOOL_JSON_PIECES = ["", '{"locat', 'ion": "Z', "ürich, CH", '", "unit": "cel', 'sius"}']
TOOL_ID = "toolu_01T1x1fJ34qAmk2tNTrN7Up6"


def a_start(usage: dict | None = None) -> tuple[str, dict]:
    return ("message_start", {"type": "message_start", "message": {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-5-20250929", "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": usage or {"input_tokens": 472, "cache_creation_input_tokens": 2048, "cache_read_input_tokens": 10240,
                           "output_tokens": 2, "service_tier": "standard"}}})


def a_block_start(index: int, block: dict) -> tuple[str, dict]:
    return ("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})


def a_delta(index: int, delta: dict) -> tuple[str, dict]:
    return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def a_stop(index: int) -> tuple[str, dict]:
    return ("content_block_stop", {"type": "content_block_stop", "index": index})


def a_end(stop_reason: str, output_tokens: int, **usage) -> list[tuple[str, dict]]:
    return [("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                               "usage": {"output_tokens": output_tokens, **usage}}),
            ("message_stop", {"type": "message_stop"})]


def anthropic_tool_events() -> list[tuple[str, dict]]:
    return [
        a_start(),
        a_block_start(0, {"type": "text", "text": ""}),
        ("ping", {"type": "ping"}),
        *[a_delta(0, {"type": "text_delta", "text": p}) for p in TEXT_PIECES],
        a_stop(0),
        a_block_start(1, {"type": "tool_use", "id": TOOL_ID, "name": "get_weather", "input": {}}),
        *[a_delta(1, {"type": "input_json_delta", "partial_json": p}) for p in TOOL_JSON_PIECES],
        a_stop(1),
        *a_end("tool_use", 89),
    ]


def anthropic_thinking_events() -> list[tuple[str, dict]]:
    return [
        a_start({"input_tokens": 30, "output_tokens": 1}),
        a_block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        a_delta(0, {"type": "thinking_delta", "thinking": "The user asks 27 * 453. "}),
        a_delta(0, {"type": "thinking_delta", "thinking": "27 * 453 = 12231."}),
        a_delta(0, {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"}),
        a_stop(0),
        a_block_start(1, {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIw"}),
        a_stop(1),
        a_block_start(2, {"type": "text", "text": ""}),
        a_delta(2, {"type": "text_delta", "text": "27 × 453 = **12,231**"}),
        a_stop(2),
        *a_end("end_turn", 120),
    ]


CITATION_1 = {"type": "char_location", "cited_text": "The grass is green. ", "document_index": 0,
              "document_title": "Nature facts", "start_char_index": 0, "end_char_index": 20, "file_id": None}
CITATION_2 = {"type": "char_location", "cited_text": "The sky is blue.", "document_index": 0,
              "document_title": "Nature facts", "start_char_index": 20, "end_char_index": 36, "file_id": None}


def anthropic_citation_events() -> list[tuple[str, dict]]:
    return [
        a_start({"input_tokens": 610, "output_tokens": 3}),
        a_block_start(0, {"type": "text", "text": "According to the document, "}),
        a_stop(0),
        a_block_start(1, {"type": "text", "text": "", "citations": []}),
        a_delta(1, {"type": "citations_delta", "citation": CITATION_1}),
        a_delta(1, {"type": "text_delta", "text": "the grass is green"}),
        a_delta(1, {"type": "citations_delta", "citation": CITATION_2}),
        a_delta(1, {"type": "text_delta", "text": " and the sky is blue."}),
        a_stop(1),
        *a_end("end_turn", 40),
    ]


def sdk_content(events: list[tuple[str, dict]]) -> list[dict]:
    """What the official anthropic SDK assembles from the same events."""
    snapshot, bufs = None, {}
    for _, data in events:
        snapshot = anthropic.lib.streaming._messages.accumulate_event(event=copy.deepcopy(data),
                                                                      current_snapshot=snapshot, json_bufs=bufs)
    return [block.to_dict() for block in snapshot.content]


# -- Anthropic ---------------------------------------------------------------------------------

def test_anthropic_text_and_tool_use_stream():
    events = anthropic_tool_events()
    seen: list[dict] = []
    tap, turn = run(A, sse(events), on_event=seen.append)
    full_text = "".join(TEXT_PIECES)
    assert turn.message == {"role": "assistant", "content": [
        {"type": "text", "text": full_text},
        {"type": "tool_use", "id": TOOL_ID, "name": "get_weather", "input": {"location": "Zürich, CH", "unit": "celsius"}},
    ]}
    assert turn.message["content"] == sdk_content(events)
    assert turn.text == full_text
    assert turn.tool_calls == [{"id": TOOL_ID, "name": "get_weather", "input": {"location": "Zürich, CH", "unit": "celsius"}}]
    assert turn.model == "claude-sonnet-4-5-20250929" and turn.id == "msg_01XFDUDYJgAACzvnptvVoYEL"
    assert turn.usage == Usage(input_tokens=472, output_tokens=89, cache_read_input_tokens=10240, cache_creation_input_tokens=2048)
    assert turn.usage.total_input == 472 + 10240 + 2048
    assert turn.stop_reason == "tool_use" and turn.stop_sequence is None
    assert turn.complete is True and turn.error is None
    assert turn.events == len(events) == len(seen)  # the ping is counted too
    assert [e["type"] for e in seen] == [d["type"] for _, d in events]
    assert tap.is_sse and tap.failed is None and tap.skipped == 0


def test_anthropic_stream_and_whole_body_give_the_same_message():
    _, streamed = run(A, sse(anthropic_tool_events()))
    body = {"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5-20250929", "content": streamed.message["content"],
            "stop_reason": "tool_use", "stop_sequence": None,
            "usage": {"input_tokens": 472, "cache_creation_input_tokens": 2048, "cache_read_input_tokens": 10240,
                      "output_tokens": 89}}
    seen: list[dict] = []
    tap, whole = run(A, orjson.dumps(body), JSON, on_event=seen.append)
    assert not tap.is_sse
    assert seen == [body]
    assert (whole.message, whole.text, whole.tool_calls, whole.usage, whole.stop_reason, whole.complete) == \
        (streamed.message, streamed.text, streamed.tool_calls, streamed.usage, streamed.stop_reason, True)
    assert whole.events == 1


def test_anthropic_thinking_signature_and_redacted_thinking():
    events = anthropic_thinking_events()
    _, turn = run(A, sse(events))
    blocks = turn.message["content"]
    assert blocks == sdk_content(events)
    assert blocks[0] == {"type": "thinking", "thinking": "The user asks 27 * 453. 27 * 453 = 12231.",
                         "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"}
    assert blocks[1] == {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIw"}
    assert turn.text == "27 × 453 = **12,231**"  # thinking is not visible text
    assert turn.tool_calls == [] and turn.stop_reason == "end_turn"
    assert turn.usage == Usage(input_tokens=30, output_tokens=120)
    assert turn.usage.total_input == 30


def test_anthropic_citations_are_appended_to_their_block():
    events = anthropic_citation_events()
    seen: list[dict] = []
    _, turn = run(A, sse(events), on_event=seen.append)
    blocks = turn.message["content"]
    assert blocks == sdk_content(events)
    assert blocks[1] == {"type": "text", "text": "the grass is green and the sky is blue.",
                         "citations": [CITATION_1, CITATION_2]}
    assert turn.text == "According to the document, the grass is green and the sky is blue."
    # the hooks' copy of content_block_start was not grown by the deltas that followed
    assert seen[3]["content_block"] == {"type": "text", "text": "", "citations": []}


def test_anthropic_server_tools_and_unknown_blocks_are_kept():
    search_result = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_014hJH82Qum7Td6UV8gDXThB",
                     "content": [{"type": "web_search_result", "title": "Weather in Zürich", "url": "https://example.com/zh",
                                  "encrypted_content": "EqgfCioIARgBIiQ3YTAwMjY1Mi1mZjM5LTQ1NGUtODgxNC1kNjNjNTk1ZWI3Y",
                                  "page_age": "2 days ago"}]}
    future_block = {"type": "holographic_chart", "spec": {"kind": "bar", "series": [1, 2, 3]}}
    events = [
        a_start(),
        a_block_start(0, {"type": "server_tool_use", "id": "srvtoolu_014hJH82Qum7Td6UV8gDXThB", "name": "web_search", "input": {}}),
        a_delta(0, {"type": "input_json_delta", "partial_json": '{"query": "weather '}),
        a_delta(0, {"type": "input_json_delta", "partial_json": 'Zürich"}'}),
        a_stop(0),
        a_block_start(1, search_result),
        a_stop(1),
        a_block_start(2, future_block),
        a_delta(2, {"type": "hologram_delta", "frame": 7}),  # a delta type from the future: ignored
        a_stop(2),
        ("content_block_ponder", {"type": "content_block_ponder", "index": 2}),  # an event type from the future
        a_block_start(3, {"type": "text", "text": ""}),
        a_delta(3, {"type": "text_delta", "text": "It is 21 °C in Zürich."}),
        a_stop(3),
        *a_end("end_turn", 200, server_tool_use={"web_search_requests": 1}),
    ]
    _, turn = run(A, sse(events))
    assert turn.message["content"] == [
        {"type": "server_tool_use", "id": "srvtoolu_014hJH82Qum7Td6UV8gDXThB", "name": "web_search",
         "input": {"query": "weather Zürich"}},
        search_result,
        future_block,
        {"type": "text", "text": "It is 21 °C in Zürich."},
    ]
    assert turn.tool_calls == []  # server tools ran at Anthropic: nothing for the client to answer
    assert turn.events == len(events)
    assert turn.complete


def test_anthropic_mid_stream_error():
    events = [
        a_start(),
        a_block_start(0, {"type": "text", "text": ""}),
        a_delta(0, {"type": "text_delta", "text": "Let me think about"}),
        ("ping", {"type": "ping"}),
        ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ]
    _, turn = run(A, sse(events))
    assert turn.error == {"type": "overloaded_error", "message": "Overloaded"}
    assert turn.complete is False
    assert turn.text == "Let me think about"  # what arrived before the error is still assembled
    assert turn.summary()["error"] == {"type": "overloaded_error", "message": "Overloaded"}


def test_anthropic_message_delta_usage_takes_latest_non_null_values():
    events = [
        a_start({"input_tokens": 5, "cache_creation_input_tokens": None, "cache_read_input_tokens": 0, "output_tokens": 1}),
        a_block_start(0, {"type": "text", "text": ""}),
        a_delta(0, {"type": "text_delta", "text": "ok"}),
        a_stop(0),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "stop_sequence", "stop_sequence": "###"},
                           "usage": {"output_tokens": 7, "input_tokens": 1900, "cache_read_input_tokens": 512,
                                     "cache_creation_input_tokens": None}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": None}, "usage": {"output_tokens": 9}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    _, turn = run(A, sse(events))
    assert turn.usage == Usage(input_tokens=1900, output_tokens=9, cache_read_input_tokens=512, cache_creation_input_tokens=None)
    assert turn.usage.total_input == 2412
    assert turn.stop_reason == "stop_sequence" and turn.stop_sequence == "###"


def test_anthropic_tool_without_arguments_and_invalid_json_arguments():
    events = [
        a_start(),
        a_block_start(0, {"type": "tool_use", "id": "toolu_a", "name": "list_files", "input": {}}),
        a_delta(0, {"type": "input_json_delta", "partial_json": ""}),
        a_stop(0),
        a_block_start(1, {"type": "tool_use", "id": "toolu_b", "name": "write", "input": {}}),
        a_delta(1, {"type": "input_json_delta", "partial_json": '{"path": "a.txt", "text": "unterminated'}),
        a_stop(1),
        *a_end("tool_use", 30),
    ]
    _, turn = run(A, sse(events))
    assert turn.tool_calls == [{"id": "toolu_a", "name": "list_files", "input": {}},
                               {"id": "toolu_b", "name": "write", "input": '{"path": "a.txt", "text": "unterminated'}]


def test_connection_error_mid_block_keeps_what_arrived():
    data = sse(anthropic_tool_events())
    cut = data.index(b'ion\\": \\"Z')  # inside the tool input's event, mid-line
    _, turn = run(A, data[:cut], error="peer closed connection without sending complete message body")
    assert turn.error == {"type": "connection", "message": "peer closed connection without sending complete message body"}
    assert turn.complete is False
    assert turn.text == "".join(TEXT_PIECES)
    assert turn.tool_calls == [{"id": TOOL_ID, "name": "get_weather", "input": '{"locat'}]  # unparsable: raw
    assert turn.stop_reason is None and turn.usage.output_tokens == 2


@pytest.mark.parametrize("mode", MODES)
def test_stream_cut_inside_a_character_or_a_blank_line_ends_the_same_in_every_mode(mode):
    """A connection that breaks mid-character or between the two LFs of a blank line: what arrived
    is read the same way whether it was read live, at the end, or in batches."""
    data = sse(anthropic_tool_events())
    inside_char = data.index("日".encode()) + 1
    inside_blank = data.index(b"\n\n", inside_char) + 1
    for cut in (inside_char, inside_blank):
        head = data[:cut]
        chunks = [head[i:i + 5] for i in range(0, len(head), 5)]
        _, turn = run(A, head, chunks=chunks, error="connection reset", mode=mode)
        _, reference = run(A, head, error="connection reset", mode="live")
        assert turn == reference and turn.complete is False
        assert turn.error == {"type": "connection", "message": "connection reset"}
    tap, turn = run(A, data[:inside_char], mode=mode)  # no error: the stream just ended there
    # the half event (its half character replaced) is not JSON: skipped, the text before it kept
    assert tap.failed is None and turn.skipped == 1 and turn.text == "".join(TEXT_PIECES[:3])
    assert turn == run(A, data[:inside_char], mode="live")[1]


def test_deferred_reading_only_holds_chunks_until_a_batch_or_the_end():
    """Without a live reader the loop's share is an append: nothing is read (not even the reader set
    up) until a batch is full or the stream ends, and the turn is the one read live."""
    data = sse(anthropic_tool_events())
    tap = ResponseTap(A, SSE, None, None)
    for i in range(0, len(data), 10):
        tap.feed(data[i:i + 10])
    assert tap.events == 0 and tap.buffered == len(data) and tap._framer is None
    turn = tap.finish()
    assert tap.buffered == 0 and turn == run(A, data, mode="live")[1]
    # a batch is read as soon as it is full: what is held stays within a batch plus one event
    tap = ResponseTap(A, SSE, None, None, batch=64)
    for i in range(0, len(data), 10):
        tap.feed(data[i:i + 10])
        assert tap.buffered < 64 + 10 + max(len(e) for e in data.split(b"\n\n"))
    assert tap.events > 0 and tap.finish() == turn


def test_deferred_reading_of_a_broken_encoding_fails_quietly_at_the_end():
    packed = bytearray(gzip.compress(sse(anthropic_tool_events())))
    packed[len(packed) // 2] ^= 0xFF
    tap = ResponseTap(A, SSE, "gzip", None)
    for i in range(0, len(packed), 16):
        tap.feed(bytes(packed[i:i + 16]))
    assert tap.failed is None  # not read yet
    turn = tap.finish()
    assert tap.failed is not None and turn.complete is False and tap.finish() is turn
    tap.feed(b"data: after finish\n\n")  # a no-op, not an error


def test_provider_error_wins_over_connection_error():
    events = [a_start(), ("error", {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}})]
    _, turn = run(A, sse(events), error="connection reset")
    assert turn.error == {"type": "api_error", "message": "Internal server error"}


# -- OpenAI Chat Completions -------------------------------------------------------------------

CHAT_BASE = {"id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", "object": "chat.completion.chunk", "created": 1741570283,
             "model": "gpt-4o-2024-08-06", "service_tier": "default", "system_fingerprint": "fp_eb9dce56a8", "usage": None}


def chunk(delta: dict | None = None, finish: str | None = None, **top) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    return {**CHAT_BASE, "choices": choices, **top}


def chat_tool_chunks() -> list[dict]:
    return [
        chunk({"role": "assistant", "content": "", "refusal": None}),
        chunk({"content": "Checking both cities — "}),
        chunk({"content": "Zürich & 東京 🙂"}),
        chunk({"tool_calls": [{"index": 0, "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"lo'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'cation": "Zürich"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_ABCDEFGHIJKLMNOP12345678", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"location": '}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": '"東京"}'}}]}),
        chunk({}, finish="tool_calls"),
        chunk(None, usage={"prompt_tokens": 1500, "completion_tokens": 61, "total_tokens": 1561,
                           "prompt_tokens_details": {"cached_tokens": 1280, "audio_tokens": 0},
                           "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                         "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}),
    ]


def chat_stream(chunks: list[dict], eol: str = "\n") -> bytes:
    return sse([(None, c) for c in chunks] + [(None, "[DONE]")], eol)


def test_openai_chat_content_parallel_tool_calls_usage_done():
    chunks = chat_tool_chunks()
    seen: list[dict] = []
    tap, turn = run(CHAT, chat_stream(chunks), on_event=seen.append)
    calls = [{"id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"location": "Zürich"}'}},
             {"id": "call_ABCDEFGHIJKLMNOP12345678", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"location": "東京"}'}}]
    assert turn.message == {"role": "assistant", "content": "Checking both cities — Zürich & 東京 🙂", "tool_calls": calls}
    assert turn.tool_calls == [{"id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "name": "get_weather", "input": {"location": "Zürich"}},
                               {"id": "call_ABCDEFGHIJKLMNOP12345678", "name": "get_weather", "input": {"location": "東京"}}]
    # cached tokens are part of prompt_tokens; Usage.input_tokens excludes them (Anthropic's meaning)
    assert turn.usage == Usage(input_tokens=220, output_tokens=61, cache_read_input_tokens=1280, cache_creation_input_tokens=0)
    assert turn.usage.total_input == 1500
    assert turn.stop_reason == "tool_calls" and turn.complete and turn.error is None
    assert turn.model == "gpt-4o-2024-08-06"
    assert turn.events == len(chunks) == len(seen)  # [DONE] is a sentinel, not an event
    assert tap.skipped == 0

    # the official SDK's accumulator agrees
    state = openai_chat_streaming.ChatCompletionStreamState()
    for c in chunks:
        state.handle_chunk(openai.types.chat.ChatCompletionChunk.model_validate(c))
    sdk = state.get_final_completion().choices[0].message
    assert sdk.content == turn.message["content"]
    assert [(t.id, t.function.name, t.function.arguments) for t in sdk.tool_calls] == \
        [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls]


def test_openai_chat_without_done_is_not_complete():
    data = chat_stream(chat_tool_chunks())
    _, turn = run(CHAT, data[:data.rindex(b"data: [DONE]")])
    assert turn.complete is False and turn.stop_reason == "tool_calls"


def test_openai_chat_reasoning_refusal_and_compatible_servers():
    chunks = [
        chunk({"role": "assistant", "content": None, "reasoning_content": "Let me think. "}),
        chunk({"reasoning_content": "Two plus two is four."}),
        chunk({"content": "4"}),
        chunk({}, finish="stop"),
    ]
    _, turn = run(CHAT, chat_stream(chunks))
    assert turn.message == {"role": "assistant", "content": "4", "reasoning_content": "Let me think. Two plus two is four."}
    assert turn.text == "4"
    # OpenRouter / Ollama's /v1 name it "reasoning"; some servers send tool calls whole and without an index
    chunks = [
        chunk({"role": "assistant", "content": "", "reasoning": "Need a tool."}),
        chunk({"tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "ls", "arguments": {"dir": "/tmp"}}}]}),
        chunk({"tool_calls": [{"id": "call_2", "type": "function", "function": {"name": "pwd", "arguments": "{}"}}]}),
        # and some repeat the name in every fragment
        chunk({"tool_calls": [{"index": 2, "id": "call_3", "type": "function", "function": {"name": "grep", "arguments": '{"q":'}}]}),
        chunk({"tool_calls": [{"index": 2, "function": {"name": "grep", "arguments": ' "TODO"}'}}]}),
        chunk({}, finish="tool_calls"),
    ]
    _, turn = run(CHAT, chat_stream(chunks))
    assert turn.message["content"] is None and turn.message["reasoning_content"] == "Need a tool."
    assert turn.tool_calls == [{"id": "call_1", "name": "ls", "input": {"dir": "/tmp"}},
                               {"id": "call_2", "name": "pwd", "input": {}},
                               {"id": "call_3", "name": "grep", "input": {"q": "TODO"}}]
    assert turn.message["tool_calls"][0]["function"]["arguments"] == '{"dir":"/tmp"}'  # a string, as the API wants
    _, turn = run(CHAT, chat_stream([chunk({"role": "assistant", "content": None, "refusal": "I can't help with that."}),
                                     chunk({}, finish="stop")]))
    assert turn.message == {"role": "assistant", "content": None, "refusal": "I can't help with that."}


def test_openai_chat_error_chunk():
    chunks = [chunk({"role": "assistant", "content": "Hel"}),
              {"error": {"message": "The server had an error while processing your request.", "type": "server_error",
                         "param": None, "code": None}}]
    _, turn = run(CHAT, chat_stream(chunks))
    assert turn.error == {"type": "server_error", "message": "The server had an error while processing your request."}
    assert turn.complete is False and turn.text == "Hel"


def test_openai_chat_whole_body_matches_stream():
    _, streamed = run(CHAT, chat_stream(chat_tool_chunks()))
    body = {"id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", "object": "chat.completion", "created": 1741570283,
            "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Checking both cities — Zürich & 東京 🙂",
                                                 "refusal": None, "annotations": [],
                                                 "tool_calls": streamed.message["tool_calls"]},
                         "logprobs": None, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 1500, "completion_tokens": 61, "total_tokens": 1561,
                      "prompt_tokens_details": {"cached_tokens": 1280}}}
    _, whole = run(CHAT, orjson.dumps(body), "application/json; charset=utf-8")
    assert (whole.message, whole.tool_calls, whole.usage, whole.stop_reason, whole.complete) == \
        (streamed.message, streamed.tool_calls, streamed.usage, "tool_calls", True)


# -- OpenAI Responses -------------------------------------------------------------------------

RESP_ID = "resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654"
MSG_ID = "msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654"
FC_ID = "fc_67c9fdd0d4d481908b4c8c07b6a0b0bd07b8b0ad4e5eb654"
RESP_TEXT_PIECES = ["I'll look up ", "the weather in ", "Zürich — 日本 next 🙂"]
RESP_ARG_PIECES = ['{"loc', 'ation": "Zü', 'rich"}']


def resp_object(status: str, output: list, usage: dict | None, **extra) -> dict:
    return {"id": RESP_ID, "object": "response", "created_at": 1741290958, "status": status, "error": None,
            "incomplete_details": None, "instructions": None, "max_output_tokens": None, "model": "gpt-4.1-2025-04-14",
            "output": output, "parallel_tool_calls": True, "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None}, "store": True, "temperature": 1.0,
            "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "top_p": 1.0,
            "truncation": "disabled", "usage": usage, "user": None, "metadata": {}, **extra}


def responses_events() -> list[tuple[str, dict]]:
    text = "".join(RESP_TEXT_PIECES)
    args = "".join(RESP_ARG_PIECES)
    msg_done = {"id": MSG_ID, "type": "message", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}
    fc_done = {"id": FC_ID, "type": "function_call", "status": "completed", "arguments": args,
               "call_id": "call_unLAR8MvFNptuiZK6K6HCy5k", "name": "get_weather"}
    usage = {"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 1024}, "output_tokens": 60,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 1260}
    raw = [
        {"type": "response.created", "response": resp_object("in_progress", [], None)},
        {"type": "response.in_progress", "response": resp_object("in_progress", [], None)},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"id": MSG_ID, "type": "message", "status": "in_progress", "role": "assistant", "content": []}},
        {"type": "response.content_part.added", "item_id": MSG_ID, "output_index": 0, "content_index": 0,
         "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}},
        *[{"type": "response.output_text.delta", "item_id": MSG_ID, "output_index": 0, "content_index": 0,
           "delta": p, "logprobs": []} for p in RESP_TEXT_PIECES],
        {"type": "response.output_text.done", "item_id": MSG_ID, "output_index": 0, "content_index": 0, "text": text,
         "logprobs": []},
        {"type": "response.content_part.done", "item_id": MSG_ID, "output_index": 0, "content_index": 0,
         "part": msg_done["content"][0]},
        {"type": "response.output_item.done", "output_index": 0, "item": msg_done},
        {"type": "response.output_item.added", "output_index": 1,
         "item": {**fc_done, "status": "in_progress", "arguments": ""}},
        *[{"type": "response.function_call_arguments.delta", "item_id": FC_ID, "output_index": 1, "delta": p}
          for p in RESP_ARG_PIECES],
        {"type": "response.function_call_arguments.done", "item_id": FC_ID, "output_index": 1, "arguments": args},
        {"type": "response.output_item.done", "output_index": 1, "item": fc_done},
        {"type": "response.completed", "response": resp_object("completed", [msg_done, fc_done], usage)},
    ]
    return [(e["type"], {**e, "sequence_number": i}) for i, e in enumerate(raw)]


def test_openai_responses_stream():
    events = responses_events()
    _, turn = run(RESP, sse(events))
    completed = events[-1][1]["response"]
    assert turn.message == {"role": "assistant", "output": completed["output"]}
    assert turn.text == "I'll look up the weather in Zürich — 日本 next 🙂"
    assert turn.tool_calls == [{"id": "call_unLAR8MvFNptuiZK6K6HCy5k", "name": "get_weather", "input": {"location": "Zürich"}}]
    assert turn.usage == Usage(input_tokens=176, output_tokens=60, cache_read_input_tokens=1024, cache_creation_input_tokens=0)
    assert turn.usage.total_input == 1200
    assert turn.id == RESP_ID and turn.model == "gpt-4.1-2025-04-14"
    assert turn.stop_reason == "completed" and turn.complete and turn.events == len(events)


def test_openai_responses_assembles_output_when_the_final_event_is_missing():
    events = responses_events()
    completed_output = events[-1][1]["response"]["output"]
    # without response.completed the items come from output_item.done: the same output
    _, turn = run(RESP, sse(events[:-1]))
    assert turn.message["output"] == completed_output and turn.complete is False
    # without any *.done event either, the deltas alone give the same text and tool calls
    deltas_only = [e for e in events if not e[0].endswith(".done") and e[0] != "response.completed"]
    _, turn = run(RESP, sse(deltas_only))
    assert turn.text == "I'll look up the weather in Zürich — 日本 next 🙂"
    assert turn.tool_calls == [{"id": "call_unLAR8MvFNptuiZK6K6HCy5k", "name": "get_weather", "input": {"location": "Zürich"}}]
    assert turn.message["output"][0]["content"][0]["text"] == turn.text
    assert turn.complete is False and turn.usage is None
    # output_text.done / function_call_arguments.done repeat the whole text: it must not be doubled
    no_items = [e for e in events if e[0] not in ("response.output_item.done", "response.completed")]
    _, turn = run(RESP, sse(no_items))
    assert turn.text == "I'll look up the weather in Zürich — 日本 next 🙂"
    assert turn.message["output"][1]["arguments"] == '{"location": "Zürich"}'


def test_openai_responses_failed_incomplete_and_error():
    failed = resp_object("failed", [], None, error={"code": "server_error", "message": "The model failed to respond."})
    _, turn = run(RESP, sse([("response.created", {"type": "response.created", "response": resp_object("in_progress", [], None)}),
                             ("response.failed", {"type": "response.failed", "response": failed})]))
    assert turn.error == {"type": "server_error", "message": "The model failed to respond.", "code": "server_error"}
    assert turn.complete is False
    incomplete = resp_object("incomplete", [{"id": MSG_ID, "type": "message", "status": "incomplete", "role": "assistant",
                                             "content": [{"type": "output_text", "text": "Once upon", "annotations": []}]}],
                             {"input_tokens": 10, "output_tokens": 16}, incomplete_details={"reason": "max_output_tokens"})
    _, turn = run(RESP, sse([("response.incomplete", {"type": "response.incomplete", "response": incomplete})]))
    assert turn.stop_reason == "max_output_tokens" and turn.complete is True and turn.text == "Once upon"
    _, turn = run(RESP, sse([("error", {"type": "error", "code": "rate_limit_exceeded", "message": "Slow down", "param": None,
                                        "sequence_number": 1})]))
    assert turn.error == {"type": "rate_limit_exceeded", "message": "Slow down", "code": "rate_limit_exceeded"}


def test_openai_responses_whole_body():
    events = responses_events()
    body = events[-1][1]["response"]
    _, turn = run(RESP, orjson.dumps(body), JSON)
    _, streamed = run(RESP, sse(events))
    assert (turn.message, turn.text, turn.tool_calls, turn.usage, turn.complete) == \
        (streamed.message, streamed.text, streamed.tool_calls, streamed.usage, True)


# -- Ollama ------------------------------------------------------------------------------------

def ollama_lines() -> list[dict]:
    def line(msg: dict, **extra) -> dict:
        return {"model": "qwen3:8b", "created_at": "2025-06-01T10:00:00.123456Z",
                "message": {"role": "assistant", "content": "", **msg}, "done": False, **extra}
    return [
        line({"thinking": "The user wants "}),
        line({"thinking": "the weather."}),
        line({"tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}]}),
        line({"content": "Checking "}),
        line({"content": "日本 🙂"}),
        {**line({}), "done": True, "done_reason": "stop", "total_duration": 4883583458, "load_duration": 1334875,
         "prompt_eval_count": 26, "prompt_eval_duration": 342546000, "eval_count": 282, "eval_duration": 4535599000},
    ]


def test_ollama_ndjson_stream():
    lines = ollama_lines()
    seen: list[dict] = []
    tap, turn = run(OLLAMA, ndjson(lines), NDJSON, on_event=seen.append)
    assert turn.message == {"role": "assistant", "content": "Checking 日本 🙂", "thinking": "The user wants the weather.",
                            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}]}
    assert turn.tool_calls == [{"id": None, "name": "get_weather", "input": {"city": "Zürich"}}]
    assert turn.usage == Usage(input_tokens=26, output_tokens=282)
    assert turn.stop_reason == "stop" and turn.complete and turn.model == "qwen3:8b"
    assert seen == lines and turn.events == len(lines) and not tap.is_sse


def test_ollama_whole_body_and_error_line():
    body = {"model": "llama3.2", "created_at": "2025-06-01T10:00:00Z", "message": {"role": "assistant", "content": "Hi!"},
            "done_reason": "stop", "done": True, "prompt_eval_count": 12, "eval_count": 3}
    _, turn = run(OLLAMA, orjson.dumps(body), "application/json; charset=utf-8")
    assert turn.message == {"role": "assistant", "content": "Hi!"} and turn.complete and turn.usage.output_tokens == 3
    lines = ollama_lines()[:2] + [{"error": "an error was encountered while running the model: unexpected EOF"}]
    _, turn = run(OLLAMA, ndjson(lines), NDJSON)
    assert turn.error == {"type": "error", "message": "an error was encountered while running the model: unexpected EOF"}
    assert turn.complete is False


# -- HTTP error bodies --------------------------------------------------------------------------

@pytest.mark.parametrize(("api", "body", "expected"), [
    (A, {"type": "error", "error": {"type": "rate_limit_error", "message": "Number of request tokens has exceeded your per-minute rate limit"}},
     {"type": "rate_limit_error", "message": "Number of request tokens has exceeded your per-minute rate limit"}),
    (A, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"},
     {"type": "overloaded_error", "message": "Overloaded"}),
    (CHAT, {"error": {"message": "Incorrect API key provided: sk-proj-****", "type": "invalid_request_error", "param": None,
                      "code": "invalid_api_key"}},
     {"type": "invalid_request_error", "message": "Incorrect API key provided: sk-proj-****", "code": "invalid_api_key"}),
    (RESP, {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "param": None,
                      "code": "insufficient_quota"}},
     {"type": "insufficient_quota", "message": "You exceeded your current quota", "code": "insufficient_quota"}),
    (OLLAMA, {"error": "model \"llama9\" not found, try pulling it first"},
     {"type": "error", "message": "model \"llama9\" not found, try pulling it first"}),
])
def test_http_error_json_bodies(api, body, expected):
    seen: list[dict] = []
    tap, turn = run(api, orjson.dumps(body), JSON, chunks=split_at(orjson.dumps(body), [3, 17, 40]), on_event=seen.append)
    assert turn.error == expected
    assert turn.complete is False and seen == [body] and turn.events == 1 and tap.failed is None
    assert orjson.loads(orjson.dumps(turn.summary()))["error"] == expected


def test_non_json_body_is_skipped_not_failed():
    html = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    tap, turn = run(A, html, "text/html")
    assert tap.failed is None and turn.events == 0 and turn.skipped == 1 and turn.complete is False


def test_event_stream_behind_a_json_content_type_is_still_read():
    _, turn = run(A, sse(anthropic_tool_events()), JSON)
    assert turn.complete and turn.text == "".join(TEXT_PIECES)
    _, turn = run(OLLAMA, ndjson(ollama_lines()), JSON)
    assert turn.complete and turn.text == "Checking 日本 🙂"


# -- SSE framing (WHATWG) -----------------------------------------------------------------------

@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_sse_line_endings(eol):
    _, turn = run(A, sse(anthropic_tool_events(), eol))
    _, reference = run(A, sse(anthropic_tool_events()))
    assert turn == reference and turn.complete


def spec_stream(eol: str = "\n") -> bytes:
    """Every SSE rule at once; the event name and the multi-line data matter here, so a blank line
    invented (or lost) at a chunk boundary changes the result."""
    start = json.dumps(a_start()[1], indent=2).split("\n")  # pretty JSON over several data lines, joined with LF
    stream = (
        "\ufeff: this is a comment, as some proxies send to keep the connection alive\n"
        "retry: 3000\nid: 1\n"
        "event:message_start\n" + "".join(f"data:{line}\n" for line in start) + "\n"
        ":\n\n"  # a comment-only event dispatches nothing
        "event: content_block_start\nfoo: bar\n"
        'data: {"type":"content_block_start","index":0,\n'
        'data:  "content_block":{"type":"text","text":""}}\n\n'
        # no "type" in the data: the SSE event name says what it is
        'event: content_block_delta\ndata: {"index":0,"delta":{"type":"text_delta","text":" two spaces: one kept é"}}\n\n'
        "event: ignored-no-data\n\n"
        'data: {"type":"content_block_stop","index":0}\n\n'
        "event: message_delta\n"
        'data: {"delta":{"stop_reason":"end_turn"},\ndata: "usage":{"output_tokens":6}}\n\n'
        'event: message_stop\ndata: {"type":"message_stop"}'  # no final blank line at the end of the stream
    )
    return stream.replace("\n", eol).encode()


def test_sse_comments_fields_colon_space_multiline_data_and_bom():
    _, turn = run(A, spec_stream())
    assert turn.text == " two spaces: one kept é"
    assert turn.model == "claude-sonnet-4-5-20250929"
    assert turn.stop_reason == "end_turn" and turn.usage.output_tokens == 6
    assert turn.complete is True and turn.events == 6 and turn.skipped == 0


@pytest.mark.parametrize("mode", MODES)
def test_sse_blank_line_split_across_chunks(mode):
    data = sse(anthropic_tool_events(), "\r\n")
    _, reference = run(A, data)
    boundaries = [i for i in range(len(data)) if data[i:i + 4] == b"\r\n\r\n"]
    for offset in (1, 2, 3):  # "\r" | "\n\r\n", "\r\n" | "\r\n", "\r\n\r" | "\n"
        _, turn = run(A, data, chunks=split_at(data, [b + offset for b in boundaries]), mode=mode)
        assert turn == reference
    cr = sse(anthropic_tool_events(), "\r")
    _, turn = run(A, cr, chunks=split_at(cr, [i + 1 for i in range(len(cr)) if cr[i:i + 2] == b"\r\r"]), mode=mode)
    assert turn == reference


@pytest.mark.parametrize("data", [sse(anthropic_tool_events(), "\r\n"), spec_stream("\r\n"), spec_stream("\r")],
                         ids=["anthropic-crlf", "spec-crlf", "spec-cr"])
@pytest.mark.parametrize("mode", MODES)
def test_every_single_split_point_and_one_byte_chunks(data, mode):
    _, reference = run(A, data)
    assert reference.complete and reference.skipped == 0
    for i in range(1, len(data)):
        _, turn = run(A, data, chunks=[data[:i], data[i:]], mode=mode)
        assert turn == reference, f"split at byte {i}"
    _, turn = run(A, data, chunks=[data[i:i + 1] for i in range(len(data))], mode=mode)
    assert turn == reference


def test_invalid_utf8_is_replaced_not_fatal():
    data = sse([a_start(), a_block_start(0, {"type": "text", "text": ""})]) + \
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a\xffb"}}\n\n'
    tap, turn = run(A, data)
    assert tap.failed is None and turn.text == "a\ufffdb"


# -- content encodings --------------------------------------------------------------------------

@pytest.mark.parametrize("enc", ["gzip", "deflate", "br", "zstd", "identity", "GZIP"])
@pytest.mark.parametrize("mode", MODES)
def test_content_encodings_with_mitmproxy_encoders(enc, mode):
    raw = sse(anthropic_tool_events())
    packed = mitm_encoding.encode(raw, enc.lower())
    _, reference = run(A, raw)
    tap, turn = run(A, packed, enc=enc, chunks=split_at(packed, range(7, len(packed), 13)), mode=mode)
    assert tap.failed is None and turn == reference


def test_raw_deflate_multi_member_gzip_chained_codings_and_zstd_frames():
    raw = sse(anthropic_tool_events())
    _, reference = run(A, raw)
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw_deflate = c.compress(raw) + c.flush()
    half = len(raw) // 2
    members = gzip.compress(raw[:half]) + gzip.compress(raw[half:])
    chained = mitm_encoding.encode(gzip.compress(raw), "br")  # gzip applied first, then br
    zc = zstandard.ZstdCompressor()
    frames = zc.compress(raw[:half]) + zc.compress(raw[half:])  # each flush its own frame
    for enc, packed in [("deflate", raw_deflate), ("gzip", members), ("gzip, br", chained), ("zstd", frames)]:
        tap, turn = run(A, packed, enc=enc, chunks=[packed[i:i + 1] for i in range(len(packed))])
        assert tap.failed is None and turn == reference, enc


def test_unsupported_or_corrupt_encoding_fails_quietly():
    raw = sse(anthropic_tool_events())
    tap, turn = run(A, raw, enc="compress")
    assert tap.failed and "compress" in tap.failed and turn.complete is False
    packed = bytearray(gzip.compress(raw))
    packed[len(packed) // 2] ^= 0xFF
    tap, turn = run(A, bytes(packed), enc="gzip")
    assert tap.failed is not None and "Error" in tap.failed
    assert tap.finish() is turn


# -- chunk splits: the same bytes give the same turn however they are cut ------------------------

def _streams() -> dict[str, tuple[ApiKind, str, bytes]]:
    return {
        "anthropic-lf": (A, SSE, sse(anthropic_tool_events() + anthropic_thinking_events()[1:-2])),
        "anthropic-crlf": (A, SSE, sse(anthropic_tool_events(), "\r\n")),
        "spec-crlf": (A, SSE, spec_stream("\r\n")),
        "anthropic-citations-cr": (A, SSE, sse(anthropic_citation_events(), "\r")),
        "chat-crlf": (CHAT, SSE, chat_stream(chat_tool_chunks(), "\r\n")),
        "responses": (RESP, SSE, sse(responses_events())),
        "ollama": (OLLAMA, NDJSON, ndjson(ollama_lines())),
    }


STREAMS = _streams()
REFERENCE = {name: run(api, data, ctype, mode="live")[1] for name, (api, ctype, data) in STREAMS.items()}
COMPRESSED = {(name, enc): mitm_encoding.encode(data, enc) for name, (_, _, data) in STREAMS.items() for enc in ("gzip", "zstd")}
split_settings = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@split_settings
@given(name=st.sampled_from(sorted(STREAMS)), mode=st.sampled_from(sorted(MODES)), data=st.data())
def test_random_splits_give_the_same_turn(name, mode, data):
    api, ctype, raw = STREAMS[name]
    positions = st.one_of(st.sampled_from(tricky_cuts(raw)), st.integers(1, len(raw) - 1))
    cuts = data.draw(st.lists(positions, max_size=60))
    tap, turn = run(api, raw, ctype, chunks=split_at(raw, cuts), mode=mode)
    assert turn == REFERENCE[name]
    assert tap.failed is None and turn.complete


@split_settings
@given(name=st.sampled_from(sorted(STREAMS)), enc=st.sampled_from(["gzip", "zstd"]), mode=st.sampled_from(sorted(MODES)),
       data=st.data())
def test_random_splits_of_compressed_streams_give_the_same_turn(name, enc, mode, data):
    api, ctype, _ = STREAMS[name]
    packed = COMPRESSED[(name, enc)]
    cuts = data.draw(st.lists(st.integers(1, len(packed) - 1), max_size=40))
    tap, turn = run(api, packed, ctype, enc=enc, chunks=split_at(packed, cuts), mode=mode)
    assert turn == REFERENCE[name]
    assert tap.failed is None


# -- robustness -----------------------------------------------------------------------------------

@settings(max_examples=80, deadline=None)
@given(api=st.sampled_from(list(ApiKind)),
       ctype=st.sampled_from([SSE, JSON, NDJSON, "text/plain"]),
       enc=st.sampled_from([None, "gzip", "br", "zstd", "deflate"]),
       chunks=st.lists(st.binary(max_size=200), max_size=20))
def test_garbage_never_raises(api, ctype, enc, chunks):
    tap = ResponseTap(api, ctype, enc, lambda e: None)
    for c in chunks:
        tap.feed(c)
    turn = tap.finish()
    assert isinstance(turn, AssembledTurn) and turn.api == api
    error = copy.deepcopy(turn.error)
    assert tap.finish("late error") is turn and turn.error == error  # idempotent: the late error changes nothing
    orjson.dumps(turn.summary())
    tap.feed(b"data: after finish\n\n")  # a no-op, not an error


@settings(max_examples=60, deadline=None)
@given(api=st.sampled_from(list(ApiKind)),
       lines=st.lists(st.one_of(st.text(max_size=40), st.sampled_from([
           "data: {", "data: []", "data: 42", "data: null", 'data: {"type": 5}', 'data: {"index": "x", "delta": 3}',
           'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":7}}',
           'data: {"choices": [{"delta": {"tool_calls": [null, 3, {"index": "a"}]}}]}',
           'data: {"type":"response.output_text.delta","output_index":"0","delta":null}',
           'data: {"message": {"tool_calls": 5}, "done": "yes"}', "event: error", "data: [DONE]", ""])), max_size=30))
def test_wrong_shapes_are_skipped_or_ignored(api, lines):
    tap = ResponseTap(api, SSE, None, None)
    tap.feed("\n".join(lines).encode())
    turn = tap.finish()
    assert tap.failed is None
    assert turn.events + turn.skipped <= sum(1 for line in lines if line.startswith("data"))


def test_invalid_json_event_is_skipped_and_counted():
    events = anthropic_tool_events()
    data = sse(events[:4]) + b"event: content_block_delta\ndata: {\"type\": \"content_block_delta\", \"ind\n\n" + \
        b"data: [1, 2]\n\n" + sse(events[4:])
    tap, turn = run(A, data)
    _, reference = run(A, sse(events))
    assert turn.skipped == 2 and tap.failed is None and "not an object" in tap.last_skip
    assert turn.events == reference.events
    assert (turn.message, turn.usage, turn.complete) == (reference.message, reference.usage, True)


def test_on_event_exceptions_are_swallowed():
    calls = []

    def hook(event: dict) -> None:
        calls.append(event["type"])
        raise RuntimeError("plugin bug")

    tap, turn = run(A, sse(anthropic_tool_events()), on_event=hook)
    _, reference = run(A, sse(anthropic_tool_events()))
    assert len(calls) == turn.events == reference.events
    assert turn == reference and tap.failed is None


def test_finish_is_idempotent():
    tap = ResponseTap(A, SSE, None, None)
    tap.feed(sse(anthropic_tool_events()))
    first = tap.finish()
    assert tap.finish() is first and tap.finish(error="boom") is first
    assert first.error is None and first.complete


def test_body_larger_than_the_cap_is_given_up(monkeypatch):
    monkeypatch.setattr(tap_module, "MAX_BODY", 1000)
    tap = ResponseTap(A, JSON, None, None)
    for _ in range(20):
        tap.feed(b" " * 100)
    assert tap.failed and "larger than 1000" in tap.failed
    assert tap.buffered == 0  # the partial body is dropped, not kept
    assert tap.finish().events == 0


def test_summary_and_usage_dicts():
    _, turn = run(A, sse(anthropic_tool_events()))
    s = turn.summary()
    assert s == {"model": "claude-sonnet-4-5-20250929", "stop_reason": "tool_use",
                 "usage": {"input_tokens": 472, "output_tokens": 89, "cache_read_input_tokens": 10240,
                           "cache_creation_input_tokens": 2048},
                 "text_chars": len("".join(TEXT_PIECES)), "tool_calls": ["get_weather"], "error": None,
                 "complete": True, "events": len(anthropic_tool_events())}
    assert orjson.loads(orjson.dumps(s)) == s
    assert Usage().total_input is None and Usage(output_tokens=3).total_input is None
    assert Usage(cache_read_input_tokens=7).total_input == 7


# -- linear work ----------------------------------------------------------------------------------

@pytest.mark.parametrize("live", [True, False])
def test_ten_thousand_small_chunks_do_linear_work(live):
    """No quadratic re-scanning or re-joining: the scanner's work stays within a constant factor of the
    input, and what is held never exceeds the incomplete event (not the stream so far), plus, when the
    reading is deferred, one batch of wire bytes not read yet."""
    slack = 0 if live else tap_module.BATCH
    # one event of ~1 MB (a huge tool input) arriving in 10,000 chunks of 100 bytes: the case where
    # `pending += chunk` or re-searching the buffer for "\n\n" goes quadratic
    big = "x" * 1_000_000
    data = sse([a_start(), a_block_start(0, {"type": "text", "text": ""}), a_delta(0, {"type": "text_delta", "text": big}),
                a_stop(0), *a_end("end_turn", 1)])
    chunks = [data[i:i + 100] for i in range(0, len(data), 100)]
    assert len(chunks) >= 10_000
    tap = ResponseTap(A, SSE, None, None, live=live)
    for c in chunks:
        tap.feed(c)
        assert tap.buffered <= len(big) + 200 + slack
    assert tap.work <= 2 * len(data)
    assert tap.finish().text == big

    # 10,000 small events in 10,000 chunks: held data never grows with the stream
    events = [a_start(), a_block_start(0, {"type": "text", "text": ""}),
              *[a_delta(0, {"type": "text_delta", "text": f"tok{i} é "}) for i in range(10_000)], a_stop(0),
              *a_end("end_turn", 10_000)]
    data = sse(events)
    step = len(data) // 10_000 + 1
    tap = ResponseTap(A, SSE, None, None, live=live)
    peak = 0
    for i in range(0, len(data), step):
        tap.feed(data[i:i + step])
        peak = max(peak, tap.buffered)
    assert peak < 400 + slack  # one event's worth (and a batch), though the stream is ~1 MB
    assert tap.work <= 2 * len(data.decode())
    turn = tap.finish()
    assert turn.events == len(events) and turn.text == "".join(f"tok{i} é " for i in range(10_000))
