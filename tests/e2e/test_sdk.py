"""The real anthropic and openai SDKs through a real mitmdump, in reverse and regular (TLS) mode,
streaming and not, including a scripted tool-use loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid

import pytest

from .conftest import Route, route_for

MODEL = "claude-opus-4-8"
BASH = {"name": "Bash", "description": "Run a shell command",
        "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}
OPENAI_BASH = {"type": "function", "function": {"name": "Bash", "description": "Run a shell command",
                                                "parameters": BASH["input_schema"]}}
RESPONSES_BASH = {"type": "function", "name": "Bash", "description": "Run a shell command",
                  "parameters": BASH["input_schema"]}


def _request_events(route: Route, since: int, n: int) -> list[dict]:
    evs = route.proxy.wait_events(lambda e: e["type"] == "request", n, since=since)
    assert len(evs) >= n, f"expected {n} request events, got {len(evs)}: {route.proxy.events(since=since)}"
    return evs


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_anthropic_tool_loop(route: Route, standin, stream):
    since = route.proxy.mark()
    client = route.anthropic()
    messages = [{"role": "user", "content": "List the files in the current directory."}]

    def call():
        kw = dict(model=MODEL, max_tokens=256, messages=messages, tools=[BASH])
        if stream:
            with client.messages.stream(**kw) as s:
                return s.get_final_message()
        return client.messages.create(**kw)

    first = call()
    assert first.stop_reason == "tool_use"
    tool = next(b for b in first.content if b.type == "tool_use")
    assert (tool.name, tool.input) == ("Bash", {"command": "ls"})
    messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "alpha.txt\nbeta.txt"}]}]
    second = call()
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == "The tool returned: alpha.txt\nbeta.txt"
    assert second.usage.input_tokens > 0

    seen = standin.requests("/v1/messages")
    assert len(seen) == 2
    assert all(r.header("host") == ("api.anthropic.com" if route.regular else f"127.0.0.1:{standin.port}") for r in seen)
    last = seen[1].json()["messages"][-1]["content"][0]
    assert (last["type"], last["tool_use_id"], last["content"]) == ("tool_result", tool.id, "alpha.txt\nbeta.txt")
    assert seen[1].json()["stream"] is True if stream else "stream" not in seen[1].json()

    evs = _request_events(route, since, 2)
    assert [e["data"]["messages"] for e in evs[:2]] == [1, 3]
    assert all(e["data"]["api"] == "anthropic" and e["data"]["stream"] == stream for e in evs)
    assert all(e["data"]["host"] == ("api.anthropic.com" if route.regular else "127.0.0.1") for e in evs)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_openai_chat_tool_loop(route: Route, standin, stream):
    since = route.proxy.mark()
    key = f"sk-proj-e2e-chat-{uuid.uuid4().hex}"
    client = route.openai(api_key=key)
    messages: list[dict] = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "list files"}]

    def call():
        if not stream:
            r = client.chat.completions.create(model="gpt-4o", messages=messages, tools=[OPENAI_BASH])
            return r.choices[0].message, r.choices[0].finish_reason, r.usage
        content, calls, finish, usage = "", {}, None, None
        for chunk in client.chat.completions.create(model="gpt-4o", messages=messages, tools=[OPENAI_BASH], stream=True,
                                                    stream_options={"include_usage": True}):
            usage = chunk.usage or usage
            for ch in chunk.choices:
                content += ch.delta.content or ""
                for tc in ch.delta.tool_calls or []:
                    c = calls.setdefault(tc.index, {"id": tc.id, "name": "", "arguments": ""})
                    c["name"] += tc.function.name or ""
                    c["arguments"] += tc.function.arguments or ""
                finish = ch.finish_reason or finish
        return {"content": content, "tool_calls": list(calls.values())}, finish, usage

    msg, finish, usage = call()
    assert finish == "tool_calls"
    if stream:
        call_id, name, args = msg["tool_calls"][0]["id"], msg["tool_calls"][0]["name"], msg["tool_calls"][0]["arguments"]
    else:
        call_id, name, args = msg.tool_calls[0].id, msg.tool_calls[0].function.name, msg.tool_calls[0].function.arguments
    assert (name, json.loads(args)) == ("Bash", {"command": "ls"})
    assert usage.prompt_tokens > 0
    messages += [{"role": "assistant", "content": None,
                  "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}]},
                 {"role": "tool", "tool_call_id": call_id, "content": "gamma.txt"}]
    msg, finish, _ = call()
    assert finish == "stop"
    assert (msg["content"] if stream else msg.content) == "The tool returned: gamma.txt"

    seen = standin.requests("/v1/chat/completions")
    assert len(seen) == 2
    assert seen[1].json()["messages"][-1] == {"role": "tool", "tool_call_id": call_id, "content": "gamma.txt"}
    assert [r.header("authorization") for r in seen] == [f"Bearer {key}"] * 2
    evs = _request_events(route, since, 2)
    assert all(e["data"]["api"] == "openai_chat" for e in evs)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_openai_responses_tool_loop(route: Route, standin, stream):
    since = route.proxy.mark()
    client = route.openai()
    items: list = [{"role": "user", "content": "list files"}]

    def call():
        if stream:
            with client.responses.stream(model="gpt-4o", input=items, tools=[RESPONSES_BASH]) as s:
                return s.get_final_response()
        return client.responses.create(model="gpt-4o", input=items, tools=[RESPONSES_BASH])

    r = call()
    fc = r.output[0]
    assert (fc.type, fc.name, json.loads(fc.arguments)) == ("function_call", "Bash", {"command": "ls"})
    items += [{"type": "function_call", "call_id": fc.call_id, "name": fc.name, "arguments": fc.arguments},
              {"type": "function_call_output", "call_id": fc.call_id, "output": "delta.txt"}]
    r = call()
    assert r.output_text == "The tool returned: delta.txt"
    assert r.usage.input_tokens > 0

    seen = standin.requests("/v1/responses")
    assert len(seen) == 2
    assert seen[1].json()["input"][-1] == {"type": "function_call_output", "call_id": fc.call_id, "output": "delta.txt"}
    evs = _request_events(route, since, 2)
    assert all(e["data"]["path"].endswith("/v1/responses") for e in evs)


@pytest.mark.parametrize("label", ["active-regular", "observe-reverse"])
def test_anthropic_sdk_with_env_only(request, label, standin):
    """What the startup banner tells users: HTTPS_PROXY + SSL_CERT_FILE (regular) or a base URL (reverse)."""
    route = route_for(request, label)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_PROXY") and not k.endswith("_proxy")}
    if route.regular:
        env.update(HTTPS_PROXY=route.proxy.url, SSL_CERT_FILE=str(route.proxy.ca_pem))
    else:
        env["ANTHROPIC_BASE_URL"] = route.proxy.url
    env["ANTHROPIC_API_KEY"] = "sk-ant-env-only"
    code = textwrap.dedent(f"""
        import anthropic
        m = anthropic.Anthropic(max_retries=0).messages.create(model={MODEL!r}, max_tokens=50,
                                                              messages=[{{"role": "user", "content": "hello"}}])
        print(m.content[0].text)
    """)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == standin.text
    [rec] = standin.requests("/v1/messages")
    # this SDK generation sends an API key from the environment as a bearer token
    assert "sk-ant-env-only" in (rec.header("x-api-key"), (rec.header("authorization") or "").removeprefix("Bearer "))
