"""One SDK conversation is one session: the real anthropic and openai SDKs through a real mitmdump with
the active profile (memory on), streaming and not. The client frames its first turn differently after
request 1 (a string becomes a block list, the breakpoint moves to the latest message, Responses ``input``
goes from a string to items); none of that may split the conversation, re-inject its first turn as
memory, or report live traffic as ingested history."""

from __future__ import annotations

import uuid

import pytest

from contextwarden.memory.inject import OPEN as MEMORY_OPEN

from .conftest import Route, route_for

MODEL = "claude-opus-4-8"
CC = {"type": "ephemeral"}


def _marked(text: str) -> list[dict]:
    """The latest message as clients mark it for the prompt cache: one text block with a breakpoint."""
    return [{"type": "text", "text": text, "cache_control": CC}]


def _anthropic_turn(client, history: list[dict], text: str, stream: bool) -> str:
    # the breakpoint goes on the newest message only: the first turn carries it on request 1, not after
    msgs = history + [{"role": "user", "content": _marked(text)}]
    kw = dict(model=MODEL, max_tokens=64, messages=msgs)
    if stream:
        with client.messages.stream(**kw) as s:
            reply = s.get_final_message()
    else:
        reply = client.messages.create(**kw)
    history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply.content[0].text}]
    return reply.content[0].text


def _chat_turn(client, history: list[dict], text: str, stream: bool) -> str:
    # OpenRouter-style content parts with cache_control, on the newest message only
    msgs = [{"role": "system", "content": "You are terse."}] + history + [{"role": "user", "content": _marked(text)}]
    if stream:
        out = "".join(ch.delta.content or "" for chunk in client.chat.completions.create(
            model="gpt-4o", messages=msgs, stream=True) for ch in chunk.choices)
    else:
        out = client.chat.completions.create(model="gpt-4o", messages=msgs).choices[0].message.content
    history += [{"role": "user", "content": text}, {"role": "assistant", "content": out}]
    return out


def _responses_turn(client, history: list[dict], text: str, stream: bool) -> str:
    # request 1 sends ``input`` as a string; later ones as a list of items
    inp = history + [{"role": "user", "content": [{"type": "input_text", "text": text}]}] if history else text
    if stream:
        with client.responses.stream(model="gpt-4o", input=inp) as s:
            out = s.get_final_response().output_text
    else:
        out = client.responses.create(model="gpt-4o", input=inp).output_text
    history += [{"role": "user", "content": text}, {"role": "assistant", "content": out}]
    return out


TURNS = {"anthropic": ("/v1/messages", "anthropic", _anthropic_turn),
         "chat": ("/v1/chat/completions", "openai", _chat_turn),
         "responses": ("/v1/responses", "openai", _responses_turn)}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("api", list(TURNS))
def test_three_turn_sdk_conversation_is_one_session(request, standin, api, stream):
    route: Route = route_for(request, "active-reverse")
    path, sdk, turn = TURNS[api]
    client = getattr(route, sdk)()
    code = uuid.uuid4().hex[:12]
    texts = [f"Remember the release codename {code} for the harbour migration project.",
             f"Which codename did the harbour migration project get? It was {code}.",
             f"Summarise the harbour migration project and its codename {code} once more."]
    since = route.proxy.mark()
    history: list[dict] = []
    for i, text in enumerate(texts, 1):
        assert turn(client, history, text, stream) == standin.text
        # a person's pace: the turn is complete (remembered) before the next message is written
        turns = route.proxy.wait_events(lambda e: e["type"] == "turn", i, since=since)
        assert len(turns) >= i, route.proxy.events(since=since)

    reqs = [e for e in route.proxy.events("request", since=since) if e["data"]["path"].endswith(path)]
    assert len(reqs) == 3
    sessions = {e["session"] for e in reqs}
    assert len(sessions) == 1, f"one conversation split into sessions {sessions}"
    assert {e["data"]["session_source"] for e in reqs} == {"first-turn hash"}
    session = sessions.pop()
    flows = {e["flow_id"] for e in reqs}

    # the first turn is not brought back as memory: it is in the history of every later request
    seen = standin.requests(path)
    assert len(seen) == 3
    for rec in seen:
        body = rec.decoded_body()
        assert MEMORY_OPEN.encode() not in body, body[:2000]
        assert body.count(texts[0].encode()) == 1
    memory = [e for e in route.proxy.events("memory", since=since, wait=0) if e.get("flow_id") in flows]
    assert not [e for e in memory if e["data"].get("injected")], memory
    # live traffic is not reported as resumed history
    ingests = [e for e in route.proxy.events("ingest", since=since, wait=1.0)
               if e.get("session") == session or e.get("flow_id") in flows]
    assert not ingests, ingests
