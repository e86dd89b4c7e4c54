"""Nothing is injected when nothing is relevant, through a live proxy (real mitmdump, memory in its own
process, the stand-in upstream), with the anthropic SDK: a tenant tells a fact in one session; in other
sessions content-free messages (greetings, acknowledgements, "is anyone there?", Claude Code's and
Codex's own envelopes alone, a bare tool-loop step) and questions about something else get no memory, and
a question about the fact does.
The ``memory`` event says why either way."""

from __future__ import annotations

import uuid

from tests.support.wait import INGEST_BOUND_S

from .conftest import Route

MODEL = "claude-opus-4-8"
FACT = "I adopted a beagle named Biscuit from the Alameda shelter last spring."
QUESTION = "Which shelter did I adopt the beagle from?"
REMINDER = ("<system-reminder>\nAs you answer the user's questions, you can use the following context:\n# currentDate\n"
            "Today's date is 2026-11-21.\n\n      IMPORTANT: this context may or may not be relevant to your tasks.\n"
            "</system-reminder>\n")
CODEX = ("<environment_context>\n  <cwd>/home/user/project</cwd>\n  <approval_policy>never</approval_policy>\n"
         "  <shell>bash</shell>\n</environment_context>")
PROBES = {
    "hello": "hello", "Hello!": "Hello!", "thanks": "thanks", "thank you!": "thank you!", "go on": "go on",
    "continue": "continue", "is anyone there?": "is anyone there?", "ok": "ok",
    "claude code reminder + hello": [{"type": "text", "text": REMINDER}, {"type": "text", "text": "hello"}],
    "claude code reminder alone": [{"type": "text", "text": REMINDER}],
    "codex environment + continue": [{"type": "text", "text": CODEX}, {"type": "text", "text": "continue"}],
    "claude code interruption": [{"type": "text", "text": "[Request interrupted by user for tool use]"}],
    # content words, but nothing the tenant's memory holds is about them: under the relevance floor
    "off topic: capital": "What is the capital of France?",
    "off topic: haiku": "Write a haiku about autumn leaves",
}
TOOL_STEP = [
    {"role": "user", "content": "Which shelter was it? Check the notes file."},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_probe1", "name": "Bash", "input": {"command": "ls"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_probe1", "content": "notes.txt"}]},
]


def _ask(route: Route, key: str, messages: list, standin) -> tuple[dict, dict]:
    """Send ``messages`` in a new session; (the memory event of the request, the body the upstream got)."""
    session = f"probe-{uuid.uuid4().hex[:12]}"
    since = route.proxy.mark()
    before = len(standin.requests("/v1/messages"))
    route.anthropic(api_key=key, default_headers={"x-contextwarden-session": session}).messages.create(
        model=MODEL, max_tokens=64, messages=messages)
    ev = route.proxy.wait_events(lambda e: e["type"] == "memory" and "why" in e["data"], 1, since=since)
    assert ev, route.proxy.events(since=since)
    return ev[-1]["data"], standin.requests("/v1/messages")[before].json()


def test_content_free_messages_get_no_memory_and_a_question_from_another_session_does(active_reverse, standin):
    route = Route(active_reverse, False, "active-reverse")
    key = f"sk-ant-e2e-probes-{uuid.uuid4().hex}"
    since = route.proxy.mark()
    route.anthropic(api_key=key, default_headers={"x-contextwarden-session": "probe-fact"}).messages.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": FACT}])
    # the fact is stored (the memory process's ingestion event) before anything is asked
    assert route.proxy.wait_events(lambda e: e["type"] == "memory" and e["data"].get("ingested"), 1, since=since,
                                   timeout=INGEST_BOUND_S)

    injected = {}
    for name, content in PROBES.items():
        mem, body = _ask(route, key, [{"role": "user", "content": content}], standin)
        injected[name] = mem.get("tokens", 0)
        assert "contextwarden-memory" not in str(body), name
        assert mem["why"] and mem.get("skipped"), (name, mem)
    mem, body = _ask(route, key, TOOL_STEP, standin)
    injected["tool loop step"] = mem.get("tokens", 0)
    assert "contextwarden-memory" not in str(body) and mem["skipped"] == "tool loop step"
    assert injected == dict.fromkeys(injected, 0), injected

    # the positive control: a question about the fact, in yet another session of the same tenant
    mem, body = _ask(route, key, [{"role": "user", "content": QUESTION}], standin)
    assert mem["injected"] >= 1 and mem["tokens"] > 0, mem
    assert "Alameda shelter" in str(body["messages"][-1]["content"])
    assert "shelter" in mem["why"] and "session" in mem["why"], mem["why"]
