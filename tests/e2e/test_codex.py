"""The real Codex CLI through a real mitmdump, offline against a stand-in that speaks the Responses API
over HTTP (SSE) and over Codex's WebSocket transport (tests/support/codex_upstream.py).

- regular mode (HTTPS_PROXY + SSL_CERT_FILE = the proxy's CA, api.openai.com redirected to the
  stand-in): Codex uses its default WebSocket; a tool loop of several steps calls Codex's own
  ``exec_command`` tool, every ``response.create`` message goes through the stages (a drop-in stage
  stamps each tool output: the upstream receives what the stages produced) and is a request row of
  its own, and the server's events are read into turns;
- observe-only: every WebSocket message, both ways, is byte-identical before and after the proxy and
  at the upstream;
- reverse mode (a provider entry whose ``base_url`` is the proxy): the same loop over HTTPS POSTs;
- a small window: clearing and compaction fire on Codex's own requests and the strict stand-in
  (call/output pairing, encrypted reasoning byte for byte and right before its call) accepts every one.
"""

from __future__ import annotations

import json
import re
import shlex
import textwrap
from pathlib import Path

import pytest

from contextwarden.cli.run import instructions
from tests.support.codex_cli import API_KEY, codex_binary, provider_args, run_codex
from tests.support.codex_upstream import CodexStandIn
from tests.support.proxy import ProxyProcess, start_together, stop_together

STEPS = 3


@pytest.fixture(scope="module")
def codex_bin() -> Path:
    return codex_binary()


@pytest.fixture(scope="module")
def codex_standin():
    with CodexStandIn() as si:
        yield si


@pytest.fixture(autouse=True)
def _fresh(codex_standin):
    codex_standin.reset()
    codex_standin.strict = True
    yield


def step_files(n: int = STEPS, size: int = 0) -> dict[str, str]:
    """``step_K.txt`` files whose text names their step (and ``size`` bytes of filler)."""
    filler = "".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7919 % 1000}\n" for i in range(size // 60))
    return {f"step_{k}.txt": f"marker-{k} of the codex tool loop\n{filler}" for k in range(1, n + 1)}


def loop_planner(steps: int = STEPS, notes: int = 0):
    """Each answer runs ``cat step_K.txt`` with Codex's ``exec_command`` until step ``steps``'s output
    came back. The step reached is the highest ``marker-K`` in the whole input (the history behind
    ``previous_response_id`` included): it is in the newest tool output, which is never cleared or
    compacted, so the loop goes on whatever the proxy did to older items. ``notes``: characters of
    notes the model writes before each call (what clearing cannot remove)."""

    def planner(api, body):
        items = body.get("input") if isinstance(body.get("input"), list) else []
        tools = [t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
        assert "exec_command" in tools, f"Codex offered no exec_command tool: {tools}"
        outputs = [str(it.get("output")) for it in items if isinstance(it, dict) and it.get("type") == "function_call_output"]
        done = max((int(m) for o in outputs for m in re.findall(r"marker-(\d+) of the codex tool loop", o)), default=0)
        if done < steps:
            text = "".join(f"Note {i} on step {done}: the output looks consistent with the plan so far. "
                           for i in range(notes // 70))
            return text, ("exec_command", {"cmd": f"cat step_{done + 1}.txt"})
        return f"All {steps} steps done.", None

    return planner


def check_loop(si: CodexStandIn, result, steps: int = STEPS) -> list:
    """The loop ran to its end: Codex ran every command and sent each output back upstream."""
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"All {steps} steps done." in result.stdout
    recs = [r for r in si.api_requests() if r.status is not None]
    assert all(r.status == 200 for r in recs), [r.problems for r in recs if r.status != 200]
    outputs = [it for r in recs for it in (r.json().get("input") or []) if isinstance(it, dict)
               and it.get("type") == "function_call_output"]
    for k in range(1, steps + 1):
        assert any(f"marker-{k} of the codex tool loop" in str(it.get("output")) for it in outputs), k
    return recs


def _events(proxy: ProxyProcess, type: str, since: int = 0, **match) -> list[dict]:
    return proxy.events(type, since=since, **match)


# -- regular mode over the WebSocket, with the stages ----------------------------------------------

STAMP = '''
"""Drop-in stage: stamps every tool output of a Responses request, so the upstream shows the rewrite."""
from contextwarden import hookimpl

name = "stamp"


@hookimpl
def cw_request(ctx):
    if ctx.api.value != "openai_responses" or not isinstance(ctx.request.input, list):
        return
    ctx.request.input = [{**it, "output": it["output"] + "\\n[stamped by contextwarden]"}
                         if isinstance(it, dict) and it.get("type") == "function_call_output" and isinstance(it.get("output"), str)
                         else it for it in ctx.request.input]
'''

ACTIVE_PROFILE = """
name: codex-e2e
extends: codex
pipeline:
  order: [budget, strip, tagging, clearing, compaction, memory, stamp]
memory:
  enabled: false
log:
  record_bodies: true
"""


@pytest.fixture(scope="module")
def codex_proxies(tmp_path_factory, codex_standin):
    """The proxies of three tests below (one each), started together: their warm-ups overlap."""
    d = tmp_path_factory.mktemp("codex-active")
    (d / "plugins").mkdir()
    (d / "plugins" / "stamp.py").write_text(textwrap.dedent(STAMP))
    (d / "codex-e2e.yaml").write_text(ACTIVE_PROFILE)
    procs = {"active": ProxyProcess(d, name="codex-active", profile=d / "codex-e2e.yaml", plugins=d / "plugins",
                                    redirect=codex_standin.url, options={"redirect_block_others": "true"}),
             "reverse": ProxyProcess(tmp_path_factory.mktemp("codex-reverse"), name="codex-reverse",
                                     profile=d / "codex-e2e.yaml", plugins=d / "plugins", reverse=codex_standin.url),
             "small": ProxyProcess(tmp_path_factory.mktemp("codex-small"), name="codex-small", profile="codex",
                                   reverse=codex_standin.url, env=SMALL)}
    start_together(procs.values())
    yield procs
    stop_together(procs.values())


@pytest.fixture(scope="module")
def ws_proxy(codex_proxies):
    return codex_proxies["active"]


def regular_env(proxy: ProxyProcess) -> dict[str, str]:
    """How Codex is pointed at the proxy in regular mode: the proxy, and its CA as Codex's extra root."""
    return {"HTTPS_PROXY": proxy.url, "SSL_CERT_FILE": str(proxy.ca_pem)}


def test_codex_websocket_tool_loop_through_the_stages(ws_proxy, codex_standin, codex_bin, tmp_path):
    si = codex_standin
    si.planner = loop_planner()
    since = ws_proxy.mark()
    result = run_codex(codex_bin, tmp_path, regular_env(ws_proxy), "run the steps", files=step_files())
    recs = check_loop(si, result)
    # Codex's default transport: one WebSocket, every request a response.create message on it
    assert recs and all(r.method == "WS" for r in recs), [(r.method, r.path) for r in recs]
    assert len(si.ws_sent) == 1
    creates = [r for r in recs if r.json().get("type") == "response.create"]
    assert len(creates) >= STEPS + 1
    # the ChatGPT-plan model list was read (that is what makes Codex offer its tools)
    assert si.requests() and any(r.route == "/backend-api/codex/models" for r in si.requests())

    # every response.create is one request of the Responses API, with its own row
    reqs = ws_proxy.wait_events(lambda e: e["type"] == "request" and e["data"].get("transport") == "websocket",
                                n=len(creates), since=since)
    assert len(reqs) == len(creates)
    assert len({e["flow_id"] for e in reqs}) == len(reqs)
    for e in reqs:
        d = e["data"]
        assert d["api"] == "openai_responses" and d["mode"] == "active" and d["host"] == "api.openai.com"
        assert d["session_source"] == "prompt_cache_key"
        assert all(v == "[REDACTED:header]" for k, v in d["headers"] if k.lower() == "authorization" or k.lower().startswith("x-codex-"))
    responses = ws_proxy.wait_events(lambda e: e["type"] == "response" and e["data"].get("transport") == "websocket",
                                     n=len(creates), since=since)
    assert [e["flow_id"] for e in responses] == [e["flow_id"] for e in reqs]
    assert all(e["data"]["status"] == 200 and e["data"]["complete"] for e in responses)
    assert sum(e["data"]["tool_calls"] == ["exec_command"] for e in responses) == STEPS
    assert responses[-1]["data"]["text_chars"] == len(f"All {STEPS} steps done.")  # the final answer, read
    turns = ws_proxy.wait_events(lambda e: e["type"] == "turn", n=len(creates), since=since)
    assert len(turns) == len(creates)

    # the upstream received what the stages produced: each tool output stamped, and the message
    # bytes the stand-in got are the ones the proxy recorded as rewritten
    outputs = [it for r in creates for it in r.json().get("input") or []
               if isinstance(it, dict) and it.get("type") == "function_call_output"]
    assert len(outputs) == STEPS and all(it["output"].endswith("[stamped by contextwarden]") for it in outputs)
    forwards = [e for e in ws_proxy.events("forward", since=since) if e["flow_id"] in {r["flow_id"] for r in reqs}]
    changed = [e for e in forwards if e["data"]["changed"]]
    assert len(changed) == STEPS, [e["data"]["reason"] for e in forwards]
    recorded = sorted((ws_proxy.home / "bodies").rglob("*.json"))
    rewritten = [json.loads(p.read_bytes()).get("rewritten") for p in recorded]
    sent = {r.body for r in creates}
    assert sum(1 for b in rewritten if b is not None and json.dumps(b, separators=(",", ":"), ensure_ascii=False).encode() in sent) == STEPS
    # Codex's credential never reached a log
    assert ws_proxy.leaks(API_KEY) == []


# -- observe-only: byte-identical both ways -------------------------------------------------------

RECORDER = '''
"""Test-only: writes every WebSocket message as this addon sees it (loaded first and last)."""
import hashlib, json, os
from mitmproxy import ctx

PATH = os.environ["CW_WS_RECORD"] + ".{tag}"


class Recorder:
    name = "ws-recorder-{tag}"

    def websocket_message(self, flow):
        m = flow.websocket.messages[-1]
        with open(PATH, "a") as f:
            f.write(json.dumps({{"from_client": m.from_client, "sha": hashlib.sha256(m.content).hexdigest(),
                                "len": len(m.content)}}) + "\\n")


addons = [Recorder()]
'''


class _FramedProxy(ProxyProcess):
    """A proxy with a recorder loaded before contextwarden (and one after it)."""

    first: Path

    def command(self) -> list[str]:
        cmd = super().command()
        return cmd[:1] + ["-s", str(self.first)] + cmd[1:]


def test_codex_websocket_observe_only_is_byte_identical(codex_standin, codex_bin, tmp_path):
    import hashlib

    si = codex_standin
    si.planner = loop_planner()
    d = tmp_path / "proxy"
    d.mkdir()
    for tag in ("first", "last"):
        (d / f"rec_{tag}.py").write_text(textwrap.dedent(RECORDER.format(tag=tag)))
    record = d / "ws"
    p = _FramedProxy(d, name="codex-observe", profile="observe-only", redirect=si.url,
                     extra_scripts=[d / "rec_last.py"], options={"redirect_block_others": "true"},
                     env={"CW_WS_RECORD": str(record)})
    p.first = d / "rec_first.py"
    with p:
        since = p.mark()
        result = run_codex(codex_bin, tmp_path, regular_env(p), "run the steps", files=step_files())
        recs = check_loop(si, result)
        reqs = p.wait_events(lambda e: e["type"] == "request" and e["data"].get("transport") == "websocket",
                             n=len(recs), since=since)
        assert len(reqs) == len(recs) and all(e["data"]["mode"] == "observe" for e in reqs)
        p.wait_events(lambda e: e["type"] == "response", n=len(recs), since=since)
    first = [json.loads(x) for x in Path(str(record) + ".first").read_text().splitlines()]
    last = [json.loads(x) for x in Path(str(record) + ".last").read_text().splitlines()]
    assert first == last  # nothing the proxy did changed a byte, either way
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    # what the client sent is what the upstream received; what the upstream sent is what the client got
    assert [m["sha"] for m in first if m["from_client"]] == [sha(r.body) for r in si.requests() if r.method == "WS"]
    assert [m["sha"] for m in first if not m["from_client"]] == [sha(t.encode()) for conn in si.ws_sent for t in conn]


# -- reverse mode over HTTPS POSTs, with a provider entry ------------------------------------------

def test_codex_reverse_mode_provider_entry(codex_proxies, codex_standin, codex_bin, tmp_path):
    si = codex_standin
    si.planner = loop_planner()
    p = codex_proxies["reverse"]
    since = p.mark()
    result = run_codex(codex_bin, tmp_path, {}, "run the steps", files=step_files(), login=False,
                       args=provider_args(p.url + "/v1"))
    recs = check_loop(si, result)
    assert all(r.method == "POST" and r.route == "/v1/responses" for r in recs)
    reqs = p.wait_events(lambda e: e["type"] == "request", n=len(recs), since=since)
    assert {e["data"]["transport"] for e in reqs} == {"http"}
    # full history each time (store: false): the stamp reached every tool output, old ones too
    last = recs[-1].json()
    assert last.get("store") is False and "previous_response_id" not in last
    outs = [it for it in last["input"] if isinstance(it, dict) and it.get("type") == "function_call_output"]
    assert len(outs) == STEPS and all(o["output"].endswith("[stamped by contextwarden]") for o in outs)
    # encrypted reasoning came back byte for byte, right before its call (the strict stand-in checked)
    assert sum(1 for it in last["input"] if isinstance(it, dict) and it.get("type") == "reasoning") == STEPS



def test_codex_reverse_mode_as_the_proxy_says(codex_proxies, codex_standin, codex_bin, tmp_path):
    """The line ``contextwarden run --mode reverse:...`` prints for Codex works as printed (a shell's quoting
    included): Codex's own provider, its base URL the proxy, its WebSocket transport through the stages."""
    si = codex_standin
    si.planner = loop_planner()
    p = codex_proxies["reverse"]
    banner = instructions("127.0.0.1", p.port, f"reverse:{si.url}", tmp_path)
    argv = shlex.split(next(line for line in banner.splitlines() if "Codex CLI:" in line).split(":", 1)[1])
    assert argv[0] == "codex"
    since = p.mark()
    result = run_codex(codex_bin, tmp_path, {}, "run the steps", files=step_files(), args=argv[1:])
    recs = check_loop(si, result)
    reqs = p.wait_events(lambda e: e["type"] == "request", n=len(recs), since=since)
    assert {e["data"]["transport"] for e in reqs} == {"websocket"}
    outs = [it for it in recs[-1].json()["input"] if isinstance(it, dict) and it.get("type") == "function_call_output"]
    assert outs and all(o["output"].endswith("[stamped by contextwarden]") for o in outs)

# -- a small window: clearing and compaction on Codex's own requests --------------------------------

SMALL_STEPS = 10
SMALL_WINDOW = 24_000
SMALL = {
    "CONTEXTWARDEN_TOKENS__CONTEXT_WINDOW": str(SMALL_WINDOW),
    "CONTEXTWARDEN_TOKENS__CALIBRATE": "false",  # the stand-in's usage is an estimate: keep counts deterministic
    "CONTEXTWARDEN_CLEARING__TRIGGER_TOKENS": "11000",
    "CONTEXTWARDEN_CLEARING__KEEP_RECENT": "2",
    "CONTEXTWARDEN_CLEARING__CLEAR_AT_LEAST": "1500",
    "CONTEXTWARDEN_CLEARING__MIN_RESULT_TOKENS": "300",
    "CONTEXTWARDEN_COMPACTION__SOFT_THRESHOLD": "0.55",
    "CONTEXTWARDEN_COMPACTION__HARD_THRESHOLD": "0.62",
    "CONTEXTWARDEN_COMPACTION__TARGET": "0.45",
    "CONTEXTWARDEN_COMPACTION__MIN_SPAN_TOKENS": "1000",
    "CONTEXTWARDEN_MEMORY__ENABLED": "false",
}


def test_codex_small_window_clearing_and_compaction(codex_proxies, codex_standin, codex_bin, tmp_path):
    from contextwarden.compress.summarise import HEADER
    from contextwarden.plugins.clearing import STUB_PREFIX

    si = codex_standin
    si.planner = loop_planner(SMALL_STEPS, notes=4000)
    p = codex_proxies["small"]
    since = p.mark()
    result = run_codex(codex_bin, tmp_path, {}, "run the steps", files=step_files(SMALL_STEPS, 6000),
                       login=False, args=provider_args(p.url + "/v1"))
    recs = check_loop(si, result, SMALL_STEPS)  # the strict stand-in accepted every request
    p.wait_events(lambda e: e["type"] == "forward", n=len(recs), since=since)
    clearing = [e["data"] for e in p.events("clearing", since=since) if e["data"].get("cleared")]
    compaction = [e["data"] for e in p.events("compaction", since=since) if e["data"].get("applied")]
    forwards = [e["data"] for e in p.events("forward", since=since)]
    assert clearing, "clearing never fired"
    assert any(c["trigger"] == "hard" for c in compaction), compaction
    assert any(c["reused"] for c in compaction), "a compaction was never re-applied"
    assert max(f["tokens_out"] for f in forwards) < 0.7 * max(f["tokens_in"] for f in forwards)
    bodies = [r.json() for r in recs]
    # cleared stubs and the summary reached the upstream, and a re-applied summary is the same bytes
    assert any(STUB_PREFIX in str(it.get("output")) for b in bodies for it in b["input"] if isinstance(it, dict))
    marker = HEADER.split("{")[0]
    summaries = [json.dumps(it) for b in bodies for it in b["input"]
                 if isinstance(it, dict) and it.get("role") == "user" and marker in str(it.get("content"))]
    assert summaries and max(summaries.count(x) for x in summaries) >= 2
    # what Codex owns is untouched: instructions and tools byte-equal, encrypted reasoning verified
    # byte for byte by the strict stand-in, each right before its call
    assert len({json.dumps(b["tools"]) for b in bodies}) == 1
    assert len({json.dumps(b.get("instructions")) for b in bodies}) == 1
