"""The providers' own context management through a real ``mitmdump``, in front of the strict stand-in
(tests/support/provider_cm.py: it rejects a malformed edit, a missing beta, and a compaction block or
item that comes back changed), with the real SDKs (docs/provider-context-management.md has the table).

- Anthropic context editing (``clear_tool_uses_20250919``) delegated: our clearing steps back (the
  body goes byte for byte) and the provider's cleared tokens are reported apart; without the edit our
  clearing clears; with ``pipeline.provider_take_over`` the edit is taken out and our clearing clears.
- Anthropic compaction (``compact_20260112``), streamed: the compaction block and ``usage.iterations``
  reach the client and the turn event, the compaction is billed on top; the block goes back unchanged;
  our compaction steps back while the provider compacts, and without the edit works only after the block.
- Responses ``context_management`` compaction, ``compaction_trigger`` and ``POST /v1/responses/compact``:
  the compaction items pass byte for byte and the compact call is not touched.
"""

from __future__ import annotations

import json
import uuid

import httpx2
import pytest

from contextwarden.wire.cost import billed_units
from tests.support.proxy import ProxyProcess, start_together, stop_together
from tests.support.sdk import anthropic, openai

STUB = "[contextwarden cleared this "
BETA = "context-management-2025-06-27"
SETTINGS = {
    "CONTEXTWARDEN_TOKENS__CALIBRATE": "false",
    "CONTEXTWARDEN_TOKENS__CONTEXT_WINDOW": "200000",
    "CONTEXTWARDEN_MEMORY__ENABLED": "false",
    "CONTEXTWARDEN_CLEARING__TRIGGER_TOKENS": "1500",
    "CONTEXTWARDEN_CLEARING__KEEP_RECENT": "1",
    "CONTEXTWARDEN_CLEARING__CLEAR_AT_LEAST": "200",
    "CONTEXTWARDEN_CLEARING__MIN_RESULT_TOKENS": "50",
    "CONTEXTWARDEN_COMPACTION__SUMMARISER": "extractive",
    "CONTEXTWARDEN_COMPACTION__SOFT_THRESHOLD": "0.15",
    "CONTEXTWARDEN_COMPACTION__HARD_THRESHOLD": "0.9",
    "CONTEXTWARDEN_COMPACTION__MIN_SPAN_TOKENS": "500",
    "CONTEXTWARDEN_PIPELINE__ADAPTIVE_BUDGETS": "false",
    "CONTEXTWARDEN_PIPELINE__BUDGETS_MS": json.dumps({"clearing": 20000, "compaction": 20000, "compression": 20000,
                                                      "recall": 20000, "strip": 20000, "tagging": 20000}),
}


@pytest.fixture(scope="module")
def proxies(tmp_path_factory, standin):
    """Two proxies, started together: the default (step back) and one that takes over."""
    ps = {"default": ProxyProcess(tmp_path_factory.mktemp("pcm"), name="pcm", profile="claude-code",
                                  reverse=standin.url, env=SETTINGS),
          "take_over": ProxyProcess(tmp_path_factory.mktemp("pcm-take"), name="pcm-take", profile="claude-code",
                                    reverse=standin.url, env={**SETTINGS, "CONTEXTWARDEN_PIPELINE__PROVIDER_TAKE_OVER":
                                                              '["clear_tool_uses", "compaction"]'})}
    start_together(ps.values())
    yield ps
    stop_together(ps.values())


@pytest.fixture
def strict(standin):
    standin.strict = True
    return standin


class Sent:
    """The bytes an SDK put on the wire (an httpx event hook)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def hook(self, request) -> None:
        request.read()
        self.bodies.append(request.content)


def sdk(kind, proxy: ProxyProcess, sent: Sent):
    http = httpx2.Client(trust_env=False, timeout=60, event_hooks={"request": [sent.hook]})
    key = f"sk-e2e-{uuid.uuid4().hex}"
    if kind is anthropic.Anthropic:
        return anthropic.Anthropic(api_key=key, base_url=proxy.url, max_retries=0, http_client=http)
    return openai.OpenAI(api_key=key, base_url=proxy.url + "/v1", max_retries=0, http_client=http)


def words(n: int, seed: int) -> str:
    return " ".join(f"w{seed}x{i % 97}" for i in range(n))


def tool_loop(tag: str, rounds: int = 6, result_words: int = 400) -> list[dict]:
    msgs: list[dict] = [{"role": "user", "content": f"Task {tag}: look at the files."}]
    for i in range(rounds):
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": f"Reading file {i}."},
                                                      {"type": "tool_use", "id": f"toolu_{tag}_{i}", "name": "Bash",
                                                       "input": {"command": f"cat f{i}.txt"}}]})
        msgs.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{tag}_{i}",
                                                  "content": words(result_words, i)}]})
    return msgs


def chat(tag: str, turns: int, each: int, seed: int = 0) -> list[dict]:
    msgs: list[dict] = []
    for i in range(turns):
        msgs.append({"role": "user", "content": f"{tag} question {i}: " + words(each, seed + i)})
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": f"{tag} answer {i}: " + words(each, seed + 500 + i)}]})
    return msgs


CLEAR = {"edits": [{"type": "clear_tool_uses_20250919", "trigger": {"type": "input_tokens", "value": 1000},
                    "keep": {"type": "tool_uses", "value": 2}}]}
TOOLS = [{"name": "Bash", "description": "run a command", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}]


def turn_of(proxy: ProxyProcess, since: int) -> dict:
    (ev,) = proxy.wait_events(lambda e: e["type"] == "turn", since=since, timeout=20)[-1:]
    return ev["data"]


def test_delegated_tool_clearing_steps_back_and_is_not_counted_as_ours(proxies, strict):
    proxy, sent = proxies["default"], Sent()
    client = sdk(anthropic.Anthropic, proxy, sent)
    msgs = tool_loop("cm1")
    mark = proxy.mark()
    with client.beta.messages.stream(model="claude-sonnet-4-6", max_tokens=256, messages=msgs, tools=TOOLS,
                                     betas=[BETA], context_management=CLEAR) as s:
        final = s.get_final_message()
    (rec,) = strict.requests("/v1/messages")
    assert rec.status == 200, rec.problems
    assert rec.decoded_body() == sent.bodies[0]  # byte for byte: our clearing stepped back
    applied = final.context_management.applied_edits
    assert applied[0].type == "clear_tool_uses_20250919" and applied[0].cleared_tool_uses == 4
    turn = turn_of(proxy, mark)
    assert turn["usage"]["provider_cleared_tokens"] == applied[0].cleared_input_tokens > 0
    assert turn["tokens_sent"] == turn["tokens_in"]  # none of it is counted as the proxy's saving

    # the same loop without the client's edit: our clearing clears (what stepping back held off)
    strict.reset(), setattr(strict, "strict", True)
    msgs2 = tool_loop("cm1b")
    client.beta.messages.create(model="claude-sonnet-4-6", max_tokens=256, messages=msgs2, tools=TOOLS)
    (rec,) = strict.requests("/v1/messages")
    assert rec.status == 200, rec.problems
    assert STUB in rec.decoded_body().decode()


def test_taken_over_tool_clearing_strips_the_edit_and_clears_cache_safely(proxies, strict):
    proxy, sent = proxies["take_over"], Sent()
    client = sdk(anthropic.Anthropic, proxy, sent)
    msgs = tool_loop("cm2")
    cm = {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}, *CLEAR["edits"]]}
    for _ in range(2):  # the second request re-applies the same stubs: the cached prefix holds
        client.beta.messages.create(model="claude-sonnet-4-6", max_tokens=256, messages=msgs, tools=TOOLS,
                                    betas=[BETA], context_management=cm,
                                    thinking={"type": "enabled", "budget_tokens": 1024})
    recs = strict.requests("/v1/messages")
    assert [r.status for r in recs] == [200, 200], [r.problems for r in recs]
    got = [r.json() for r in recs]
    # the client's clearing edit is out, its thinking edit is kept; our stubs are in, the same both times
    assert got[0]["context_management"] == {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}
    assert STUB in json.dumps(got[0]["messages"]) and got[0]["messages"] == got[1]["messages"]
    assert "context_management" not in json.dumps(recs[0].response_body.decode())  # the provider cleared nothing


def test_provider_compaction_streams_is_billed_and_goes_back_unchanged(proxies, strict):
    proxy, sent = proxies["default"], Sent()
    client = sdk(anthropic.Anthropic, proxy, sent)
    cm = {"edits": [{"type": "compact_20260112", "trigger": {"type": "input_tokens", "value": 50000}}]}
    betas = [BETA, "compact-2026-01-12"]
    msgs = chat("cm3", 30, 1100) + [{"role": "user", "content": "And now?"}]
    mark = proxy.mark()
    with client.beta.messages.stream(model="claude-sonnet-4-6", max_tokens=256, messages=msgs, betas=betas,
                                     context_management=cm) as s:
        final = s.get_final_message()
    (rec,) = strict.requests("/v1/messages")
    assert rec.status == 200, rec.problems
    assert rec.decoded_body() == sent.bodies[0]  # above our compaction's threshold, yet not compacted by us
    block = final.content[0]
    assert block.type == "compaction" and block.content
    its = final.usage.iterations
    assert [i.type for i in its] == ["compaction", "message"]
    turn = turn_of(proxy, mark)
    u = turn["usage"]
    assert [i["type"] for i in u["iterations"]] == ["compaction", "message"]
    top = {k: v for k, v in u.items() if k != "iterations"}
    assert billed_units(u) == pytest.approx(billed_units(top) + its[0].input_tokens)  # billed on top
    assert not proxy.events("compaction", since=mark, wait=0.2)

    # the next request carries the block back: unchanged (strict), and everything before it the provider drops
    strict.reset(), setattr(strict, "strict", True)
    history = msgs + [{"role": "assistant", "content": [b.to_dict() for b in final.content]},
                      {"role": "user", "content": "Go on."}]
    client.beta.messages.create(model="claude-sonnet-4-6", max_tokens=256, messages=history, betas=betas,
                                context_management=cm)
    (rec,) = strict.requests("/v1/messages")
    assert rec.status == 200, rec.problems
    assert rec.decoded_body() == sent.bodies[-1]
    assert json.loads(rec.response_body)["usage"]["input_tokens"] < 2000  # (the stand-in dropped the rest)

    # the client stops delegating: our compaction works, but only after the provider's block
    strict.reset(), setattr(strict, "strict", True)
    boundary = len(msgs) + 1
    longer = history + [{"role": "assistant", "content": "Going on."}] + chat("cm3-after", 14, 1100, seed=40) \
        + [{"role": "user", "content": "Finish."}]
    mark = proxy.mark()
    client.beta.messages.create(model="claude-sonnet-4-6", max_tokens=256, messages=longer, betas=betas)
    (rec,) = strict.requests("/v1/messages")
    assert rec.status == 200, rec.problems
    out = rec.json()["messages"]
    assert out[:boundary] == longer[:boundary]  # the block and all before it as they came
    assert proxy.events("compaction", since=mark, applied=True)
    assert "summary" in json.dumps(out[boundary:boundary + 2])


def test_a_modified_or_malformed_request_is_the_providers_to_refuse(proxies, strict):
    proxy, sent = proxies["default"], Sent()
    client = sdk(anthropic.Anthropic, proxy, sent)
    bad = {"edits": [{"type": "clear_tool_uses_20250919", "keep": {"type": "tool_uses", "value": "two"}}]}
    with pytest.raises(anthropic.BadRequestError, match="keep"):
        client.beta.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=tool_loop("cm4", 2),
                                    tools=TOOLS, betas=[BETA], context_management=bad)
    with pytest.raises(anthropic.BadRequestError, match="beta header"):  # no beta: the API refuses the edit
        client.beta.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=tool_loop("cm4b", 2),
                                    tools=TOOLS, context_management=CLEAR)
    forged = [{"role": "user", "content": "hi"},
              {"role": "assistant", "content": [{"type": "compaction", "content": "edited summary", "encrypted_content": "x"}]},
              {"role": "user", "content": "and?"}]
    with pytest.raises(anthropic.BadRequestError, match="compaction"):
        client.beta.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=forged, betas=["compact-2026-01-12"])


def test_responses_compaction_items_trigger_and_compact_endpoint_pass_byte_for_byte(proxies, strict):
    proxy, sent = proxies["default"], Sent()
    client = sdk(openai.OpenAI, proxy, sent)
    items = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"part {i}: " + words(900, i)} for i in range(30)]
    items.append({"role": "user", "content": "so?"})
    cm = [{"type": "compaction", "compact_threshold": 2000}]
    stream = client.responses.create(model="gpt-5.1", input=items, context_management=cm, stream=True, store=False)
    done = [e for e in stream if e.type == "response.completed"][0].response
    (rec,) = strict.requests("/v1/responses")
    assert rec.status == 200, rec.problems
    assert rec.decoded_body() == sent.bodies[0]
    comp = done.output[0]
    assert comp.type == "compaction" and comp.encrypted_content

    # the item goes back in the next input (stateless chaining), verified unchanged by the stand-in
    strict.reset(), setattr(strict, "strict", True)
    nxt = items + [o.model_dump(exclude_none=True) for o in done.output] + [{"role": "user", "content": "go on"}]
    client.responses.create(model="gpt-5.1", input=nxt, context_management=cm, store=False)
    (rec,) = strict.requests("/v1/responses")
    assert rec.status == 200, rec.problems
    assert rec.decoded_body() == sent.bodies[-1]

    # Codex's on-demand compaction: a compaction_trigger last
    strict.reset(), setattr(strict, "strict", True)
    trig = client.responses.create(model="gpt-5.1", input=nxt + [{"type": "compaction_trigger"}], store=False)
    (rec,) = strict.requests("/v1/responses")
    assert rec.status == 200, rec.problems
    assert rec.decoded_body() == sent.bodies[-1]
    assert [o.type for o in trig.output] == ["compaction"]

    # POST /v1/responses/compact: routed past the stages, both ways byte for byte
    strict.reset(), setattr(strict, "strict", True)
    mark = proxy.mark()
    raw = client.responses.with_raw_response.compact(model="gpt-5.1", input=nxt)
    compacted = raw.parse()
    (rec,) = strict.requests("/v1/responses/compact")
    assert rec.status == 200 and rec.decoded_body() == sent.bodies[-1]
    assert raw.http_response.content == bytes(rec.response_body)
    assert compacted.output[-1].type == "compaction"
    assert not proxy.events("request", since=mark, wait=0.3)  # not one of ours: no stage saw it
