"""The Responses WebSocket (Codex CLI's transport) under mitmproxy's test harness: each client
``response.create`` message is one request of the Responses API (stages, validator, fail open, events),
server messages are read into the turn, anything else passes unread; plus the re-framing of a
rewritten text message and the TUI row of a WebSocket request."""

from __future__ import annotations

import json

import orjson
import pytest
from mitmproxy import http, websocket
from mitmproxy.test import tflow
from wsproto.frame_protocol import Opcode

from contextwarden.addons.websocket import _Utf8Fragmentizer, message_type
from contextwarden.tui.store import Store
from tests.addons.test_interceptor import ONLY, harness_factory  # noqa: F401  (the fixture)
from tests.support.wait import await_until

STAMP = """
    from contextwarden import hookimpl
    name = "stamp"

    @hookimpl
    def cw_request(ctx):
        if "PLEASE-RAISE" in str(ctx.original.get("input")):
            raise RuntimeError("stamp failed on purpose")
        if "PLEASE-BLOCK" in str(ctx.original.get("input")):
            ctx.block(429, b'{"error": {"type": "rate_limit_exceeded", "message": "budget"}}', {"retry-after": "7"})
            return
        ctx.request.input = ctx.request.input + [{"role": "user", "content": "stamped"}]
"""


def ws_flow(host="api.openai.com", path="/v1/responses", headers=()) -> http.HTTPFlow:
    f = tflow.twebsocketflow()
    f.request.host, f.request.port, f.request.scheme, f.request.path = host, 443, "https", path
    f.request.headers["authorization"] = "Bearer sk-proj-SECRET-ws"
    f.request.headers["chatgpt-account-id"] = "acct-123"
    for k, v in headers:
        f.request.headers[k] = v
    f.websocket.messages = []
    return f


def create(text: str, **extra) -> bytes:
    return orjson.dumps({"type": "response.create", "model": "gpt-5-codex", "stream": True, "store": False,
                         "prompt_cache_key": "sess-ws-1",
                         "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}],
                         **extra})


def server_events(rid="resp_1") -> list[bytes]:
    item = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": "hi there", "annotations": []}]}
    usage = {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 40}, "output_tokens": 5}
    return [orjson.dumps(e) for e in (
        {"type": "response.created", "response": {"id": rid, "status": "in_progress", "output": []}},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": {"id": rid, "status": "completed", "model": "gpt-5-codex",
                                                    "output": [item], "usage": usage}},
    )]


class WS:
    """Drives the script's WebSocket addon the way mitmproxy's layer does: one hook call per message."""

    def __init__(self, harness, flow):
        self.h = harness
        self.addon = next(a for a in harness.script.addons if type(a).__name__ == "WebSocketResponses")
        self.flow = flow
        flow.response = None
        self.addon.request(flow)  # the upgrade request
        flow.response = http.Response.make(101)

    async def send(self, content: bytes, from_client=True, text=True) -> websocket.WebSocketMessage:
        m = websocket.WebSocketMessage(Opcode.TEXT if text else Opcode.BINARY, from_client, content)
        self.flow.websocket.messages.append(m)
        await self.addon.websocket_message(self.flow)
        return m

    async def answer(self, events: list[bytes]) -> None:
        for e in events:
            await self.send(e, from_client=False)
        await await_until(lambda: self.h.events("response"), 1, interval=0.02)  # the response event is emitted by a task


@pytest.fixture
def stamped(harness_factory):  # noqa: F811
    return harness_factory(profile_yaml="extends: codex\n" + ONLY.format(stages="stamp", budget=5000),
                           plugins={"stamp": STAMP})


async def test_create_message_goes_through_the_stages(stamped):
    h = stamped
    ws = WS(h, ws_flow())
    m = await ws.send(create("hello"))
    sent = orjson.loads(m.content)
    assert sent["input"][-1] == {"role": "user", "content": "stamped"}  # rewritten in place
    assert sent["type"] == "response.create" and sent["prompt_cache_key"] == "sess-ws-1"
    [req] = h.events("request")
    d = req.data
    assert d["transport"] == "websocket" and d["api"] == "openai_responses" and d["mode"] == "active"
    assert d["session_source"] == "prompt_cache_key" and req.session == "sess-ws-1"
    assert req.flow_id == f"{ws.flow.id}.0"
    headers = dict(d["headers"])
    assert headers["authorization"] == "[REDACTED:header]" and headers["chatgpt-account-id"] == "[REDACTED:header]"
    [fwd] = h.events("forward")
    assert fwd.data["changed"] and fwd.data["bytes_out"] == len(m.content)
    await ws.answer(server_events())
    [resp] = h.events("response")
    r = resp.data
    assert r["transport"] == "websocket" and r["status"] == 200 and r["complete"] and r["text_chars"] == len("hi there")
    assert r["usage"]["cache_read_input_tokens"] == 40 and resp.flow_id == req.flow_id
    # the next request on the same socket is a row of its own
    await ws.send(create("again"))
    assert [e.flow_id for e in h.events("request")] == [f"{ws.flow.id}.0", f"{ws.flow.id}.1"]
    assert "SECRET" not in json.dumps([e.data for e in h.events()])


async def test_fail_open_and_unknown_messages_pass_unchanged(stamped):
    h = stamped
    ws = WS(h, ws_flow())
    raw = create("PLEASE-RAISE now")
    m = await ws.send(raw)
    assert m.content == raw and not m.dropped
    assert any(e.data.get("where") == "stage" for e in h.events("error"))
    for other in (b'{"type":"response.cancel","response_id":"resp_1"}', b"not json at all", b'["a", "list"]'):
        m = await ws.send(other)
        assert m.content == other
    m = await ws.send(create("binary"), text=False)
    assert m.content == create("binary")
    assert len(h.events("request")) == 1  # only the response.create message was a request


async def test_other_websockets_are_not_ours(stamped):
    h = stamped
    ws = WS(h, ws_flow(host="example.com", path="/socket"))
    raw = create("hello")
    m = await ws.send(raw)
    assert m.content == raw and h.events("request") == []


async def test_chatgpt_plan_endpoint_is_recognised(stamped):
    h = stamped
    ws = WS(h, ws_flow(host="chatgpt.com", path="/backend-api/codex/responses"))
    m = await ws.send(create("hello"))
    assert orjson.loads(m.content)["input"][-1]["content"] == "stamped"
    assert h.events("request")[0].data["path"] == "/backend-api/codex/responses"


async def test_blocked_request_answers_on_the_socket(stamped, monkeypatch):
    h = stamped
    ws = WS(h, ws_flow())
    injected = []
    monkeypatch.setattr("contextwarden.addons.websocket._inject", lambda flow, data: injected.append(data))
    m = await ws.send(create("PLEASE-BLOCK"))
    assert m.dropped
    [data] = injected
    ev = orjson.loads(data)
    assert ev["type"] == "error" and ev["status"] == 429 and ev["error"]["type"] == "rate_limit_exceeded"
    await await_until(lambda: h.events("response"), 1, interval=0.02)
    assert h.events("response")[0].data["status"] == 429


async def test_blocked_request_goes_upstream_when_the_answer_cannot_be_injected(stamped, monkeypatch):
    h = stamped
    ws = WS(h, ws_flow())

    def fail(flow, data):
        raise RuntimeError("no proxy server")

    monkeypatch.setattr("contextwarden.addons.websocket._inject", fail)
    raw = create("PLEASE-BLOCK")
    m = await ws.send(raw)
    assert not m.dropped and m.content == raw


def test_message_type():
    assert message_type(b'{"type":"response.create","input":[]}') == "response.create"
    assert message_type(b'{"model":"x","type":"response.create"}') == "response.create"
    assert message_type(b'  {"type" : "response.cancel"}') == "response.cancel"
    assert message_type(b"[1, 2]") is None and message_type(b"nope") is None and message_type(b'{"a":1}') is None


@pytest.mark.parametrize("original", [[8000], [3000, 3000, 2000]])
def test_rewritten_text_is_cut_between_characters(original):
    # every 4,000-byte cut of mitmproxy's fragmentizer would fall inside a 3-byte character
    content = ("x" + "€" * 4000).encode()
    frames = list(_Utf8Fragmentizer([b"a" * n for n in original], True)(content))
    assert "".join(f.data for f in frames).encode() == content
    assert all(not f.message_finished for f in frames[:-1]) and frames[-1].message_finished
    assert len(frames) == (1 if len(original) == 1 else len(frames)) and (len(original) == 1 or len(frames) > 1)


def test_unmodified_message_keeps_the_clients_framing():
    content = b"a" * 5000
    frames = list(_Utf8Fragmentizer([b"a" * 1000, b"a" * 4000], True)(content))
    assert [len(f.data) for f in frames] == [1000, 4000]


def test_tui_row_of_a_websocket_request():
    from contextwarden.tui.widgets.request_log import detail_text, row_cells
    from tests.tui.events import EventFactory

    f = EventFactory()
    http_events = f.request("s-codex", tokens_in=9000, model="gpt-5-codex")
    ws_events = f.request("s-codex", tokens_in=9500, tokens_sent=7000, model="gpt-5-codex")
    for e in ws_events:
        e["flow_id"] = "wsflow.0"
        if e["type"] in ("request", "response"):
            e["data"] = {**e["data"], "api": "openai_responses", "transport": "websocket"}
    store = Store()
    store.apply(http_events + ws_events)
    rows = store.newest_requests()
    assert [r.flow_id for r in rows] == ["wsflow.0", http_events[0]["flow_id"]]
    ws_row, http_row = rows
    assert ws_row.transport == "websocket" and http_row.transport == "http"
    assert (ws_row.tokens_in, ws_row.tokens_sent, ws_row.status, ws_row.turn) == (9500, 7000, 200, 2)
    # the same columns as an HTTP request's row, filled the same way
    cells = [str(c) for c in row_cells(ws_row)]
    assert cells[:2] == ["2", "s-codex"] and cells[3:5] == ["9,500", "7,000"] and cells[-2] == "200"
    assert "gpt-5-codex · websocket · 12 msgs" in detail_text(ws_row).plain
    assert "websocket" not in detail_text(http_row).plain
