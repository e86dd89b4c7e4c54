"""The session's decided state holds under load and faults, end to end.

A real ``mitmdump`` with the ``claude-code`` profile on a small window, the strict stand-in upstream
(it answers 400 to any body the real API would reject), and a raw httpx client running a long tool loop:
every request re-sends the growing history, each step adding a tool result of a few thousand tokens.

- Under load: three busy-loop processes keep the CPU saturated the whole time, and a drop-in stage
  (``stall``) sleeps past its budget on every fourth request, so the fall-back really happens. After the
  session's first reduction, no request the upstream receives is the client's whole history, none is
  above the window, and every stalled request went out as the session's decided state (``forward``
  events with ``fallback: "decided"``).
- After SIGKILL: the proxy is killed mid-session and started again on the same data directory; the
  same request then carries the same decisions byte for byte (they live in SQLite, not in memory).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid

import httpx
import pytest

from tests.support.proxy import ProxyProcess

WINDOW = 24_000
STALL_BUDGET_MS = 300
SETTINGS = {
    "CONTEXTWARDEN_TOKENS__CONTEXT_WINDOW": str(WINDOW),
    "CONTEXTWARDEN_TOKENS__CALIBRATE": "false",
    "CONTEXTWARDEN_MEMORY__ENABLED": "false",  # no model loading: the test is about clearing and compaction
    "CONTEXTWARDEN_COMPRESSION__ENABLED": "false",  # (nor compression workers: no result is compressed)
    "CONTEXTWARDEN_CLEARING__TRIGGER_TOKENS": "14000",
    "CONTEXTWARDEN_CLEARING__KEEP_RECENT": "2",
    "CONTEXTWARDEN_CLEARING__CLEAR_AT_LEAST": "3000",
    "CONTEXTWARDEN_COMPACTION__SUMMARISER": "extractive",
    "CONTEXTWARDEN_COMPACTION__SOFT_THRESHOLD": "0.45",
    "CONTEXTWARDEN_COMPACTION__HARD_THRESHOLD": "0.5",
    "CONTEXTWARDEN_COMPACTION__TARGET": "0.3",
    "CONTEXTWARDEN_COMPACTION__PROTECT_RECENT_TURNS": "1",
    "CONTEXTWARDEN_COMPACTION__MIN_SPAN_TOKENS": "1000",
    # the pruning stages get room on a saturated machine (the profile's bounds); the stall stage does not
    "CONTEXTWARDEN_PIPELINE__BUDGETS_MS": json.dumps({"clearing": 5000, "compaction": 5000, "stall": STALL_BUDGET_MS}),
}

STALL = '''
"""Drop-in stage that sleeps past its budget when the request's path asks it to."""
import time

from contextwarden import hookimpl

name = "stall"


@hookimpl
def cw_request(ctx):
    if "stall=1" in ctx.path:
        time.sleep(1.2)  # (a wait, not work: abandoned only past 3x its budget in wall time, see stageclock)
'''


def output(i: int) -> str:
    """A tool output of about 2,500 tokens, different for every step."""
    return "\n".join(f"data/file_{i}.txt line {j}: value {i * 1000 + j} status ok checksum {(i * 7919 + j * 31) % 100_003}"
                     for j in range(160))


def history(steps: int, session: str) -> dict:
    """A task, then a tool loop of ``steps`` calls; a new user message every fourth step (so there are
    turns to compact). Ends with the latest tool result, as an agent's request does."""
    msgs: list[dict] = [{"role": "user", "content": "Read every file in data/ and summarise them."}]
    for i in range(steps):
        if i and i % 4 == 0:
            msgs[-1]["content"].append({"type": "text", "text": f"Good. Carry on with the next files ({i} done)."})
        msgs.append({"role": "assistant", "content": [
            {"type": "text", "text": f"Reading data/file_{i}.txt next."},
            {"type": "tool_use", "id": f"toolu_{session[:8]}_{i:04d}", "name": "Bash",
             "input": {"command": f"cat data/file_{i}.txt"}}]})
        msgs.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{session[:8]}_{i:04d}",
                                                  "content": output(i)}]})
    return {"model": "claude-sonnet-4-5", "max_tokens": 256,
            "metadata": {"user_id": f"user_x_account_y_session_{session}"},
            "system": [{"type": "text", "text": "You are a careful agent.", "cache_control": {"type": "ephemeral"}}],
            "messages": msgs}


def _proxy(workdir, name: str, plugins=None) -> ProxyProcess:
    return ProxyProcess(workdir, name=name, profile="claude-code", reverse=_proxy.upstream, plugins=plugins, env=SETTINGS)


def _post(client: httpx.Client, proxy: ProxyProcess, body: bytes, query: str) -> httpx.Response:
    r = client.post(proxy.url + "/v1/messages?" + query, content=body,
                    headers={"content-type": "application/json", "x-api-key": "sk-ant-decided-state"})
    assert r.status_code == 200, r.text
    return r


def _stubs(body: dict) -> dict[str, str]:
    """tool_use_id -> the tool_result block, for every result cleared to a stub."""
    return {b["tool_use_id"]: json.dumps(b) for m in body["messages"] if isinstance(m["content"], list)
            for b in m["content"] if b.get("type") == "tool_result"
            and str(b.get("content")).startswith("[contextwarden cleared this ")}


def _received(standin, query: str) -> bytes:
    """The body the upstream received for the request sent with ``query``."""
    [rec] = [r for r in standin.requests("/v1/messages") if r.path == "/v1/messages?" + query]
    return rec.body


def _forwards(proxy: ProxyProcess, since: int, n: int) -> dict[str, dict]:
    """The ``forward`` event of each of the ``n`` requests after ``since``, by the request's path."""
    reqs = proxy.wait_events(lambda e: e["type"] == "request", n, since=since, timeout=30)
    ids = {e["flow_id"]: e["data"]["path"] for e in reqs}
    fwd = proxy.wait_events(lambda e: e["type"] == "forward" and e["flow_id"] in ids, n, since=since, timeout=30)
    return {ids[e["flow_id"]]: e["data"] for e in fwd}


@pytest.fixture
def strict(standin):
    standin.strict = True
    _proxy.upstream = standin.url
    return standin


@pytest.fixture
def busy_cpu():
    """Three busy loops (more than this machine has cores), started by the test once its proxy is up (under
    them the proxy's start takes several times as long, and the other worker's tests wait too), killed at its end."""
    procs: list[subprocess.Popen] = []

    def start() -> list[subprocess.Popen]:
        procs.extend(subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3))
        return procs
    try:
        yield start
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(10)


def test_under_a_saturated_cpu_every_request_carries_the_decided_state(tmp_path, strict, busy_cpu):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "stall.py").write_text(textwrap.dedent(STALL))
    proxy = _proxy(tmp_path / "proxy", "under-load", plugins=plugins).start()
    try:
        loops = busy_cpu()
        assert loops and all(p.poll() is None for p in loops)
        session = uuid.uuid4().hex
        steps = 16
        sent: dict[str, bytes] = {}
        since = proxy.mark()
        with httpx.Client(timeout=60) as c:
            for n in range(1, steps + 1):
                query = f"step={n}" + ("&stall=1" if n % 4 == 3 else "")
                if "stall=1" in query:
                    # the previous stall call has returned (else the breaker skips the stage and this
                    # request shows no fall-back): on a quiet machine 4 requests take less than its sleep
                    overran = len(proxy.events("stage", since=since, wait=0, stage="stall", status="timeout"))
                    proxy.wait_events(lambda e: e["type"] == "stage_recovered" and e["data"].get("stage") == "stall",
                                      overran, since=since, timeout=20)
                sent[f"/v1/messages?{query}"] = body = json.dumps(history(n, session)).encode()
                _post(c, proxy, body, query)
        got = {r.path: r for r in strict.requests("/v1/messages")}
        assert set(got) == set(sent)
        assert all(r.status == 200 and not r.problems for r in got.values())
        fwd = _forwards(proxy, since, steps)
        paths = sorted(sent, key=lambda p: int(p.split("step=")[1].split("&")[0]))

        first = next((i for i, p in enumerate(paths) if got[p].body != sent[p]), None)
        assert first is not None, "nothing was ever reduced"
        after = paths[first:]
        assert len(after) >= 8
        for p in after:
            # never the client's whole history, never above the window
            assert got[p].body != sent[p], p
            assert fwd[p]["tokens_out"] <= WINDOW, (p, fwd[p])
            assert fwd[p]["tokens_out"] < fwd[p]["tokens_in"], (p, fwd[p])
        assert max(fwd[p]["tokens_in"] for p in after) > 2 * WINDOW  # the history outgrew the window twice over
        # the stalled requests fell back, to the decided state (the pruning stages' stored decisions)
        stalled = [p for p in after if "stall=1" in p]
        assert stalled
        fell = [p for p in stalled if fwd[p]["fallback"] is not None]
        for p in fell:
            assert fwd[p]["fallback"] == "decided" and fwd[p]["changed"] is True, (p, fwd[p])
            assert fwd[p]["fallback_reason"].startswith("stage stall timeout: ran past its"), fwd[p]
        for p in set(stalled) - set(fell):
            # (the stall call of an earlier request was still sleeping: the breaker skipped the stage)
            assert {"stage": "stall", "ms": 0.0, "status": "skipped"} in fwd[p]["stages"], (p, fwd[p])
        assert fell
        fallbacks = [e for e in proxy.events("forward", since=since) if e["data"].get("fallback")]
        assert len(fallbacks) >= len(fell)
        assert all(e["data"]["fallback"] == "decided" for e in fallbacks)
        assert proxy.alive
    finally:
        proxy.stop(timeout=5)


def test_after_sigkill_the_same_decisions_go_out_byte_for_byte(tmp_path, strict):
    work = tmp_path / "proxy"
    proxy = _proxy(work, "before-kill").start()
    session = uuid.uuid4().hex
    try:
        with httpx.Client(timeout=60) as c:
            for n in range(1, 11):
                _post(c, proxy, json.dumps(history(n, session)).encode(), f"step={n}")
            since = proxy.mark()
            body = json.dumps(history(11, session)).encode()
            _post(c, proxy, body, "step=11")
        [ev] = [e["data"] for e in proxy.events("compaction", since=since) if e["data"].get("applied")]
        assert ev["reused"] is True  # a decision made before, re-applied
        before = _received(strict, "step=11")
        assert before != body and b"[contextwarden cleared this " in before
    finally:
        proxy.proc.kill()  # SIGKILL: no shutdown hooks, no flush
        proxy.wait_stopped(10)
    assert proxy.proc.returncode == -9

    again = _proxy(work, "after-kill").start()
    try:
        since = again.mark()
        with httpx.Client(timeout=60) as c:
            _post(c, again, body, "step=11&again=1")
            _post(c, again, json.dumps(history(12, session)).encode(), "step=12")
        after = _received(strict, "step=11&again=1")
        assert after == before  # the same decisions, byte for byte
        later = json.loads(_received(strict, "step=12"))
        first = json.loads(before)
        # the next request keeps the same summary and every stub as they were (it may clear more)
        assert json.dumps(later["messages"][0]) == json.dumps(first["messages"][0])
        assert "[contextwarden: summary of the " in json.dumps(first["messages"][0])
        stubs = _stubs(first)
        assert stubs and all(_stubs(later).get(k) == v for k, v in stubs.items())
        fwd = _forwards(again, since, 2)
        assert all(f["fallback"] is None for f in fwd.values())
    finally:
        again.stop(timeout=5)
