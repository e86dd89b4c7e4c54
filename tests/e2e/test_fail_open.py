"""Fail-open: drop-in stages that raise or overrun their budget never cost a request.

The stages are plugin files in a folder given with ``cw_plugins``; the budget comes from the
environment (CONTEXTWARDEN_PIPELINE__STAGE_BUDGET_MS), the order from a profile YAML.
"""

from __future__ import annotations

import json
import textwrap
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.proxy import ProxyProcess

# a budget no no-op stage misses even on a loaded machine, and a sleep well past it (0.7 s left a loaded CI run
# only 0.5 s to forward a timed-out request before its sleeper woke: once the order check failed)
BUDGET_MS = 200
SLEEP_S = 1.5

RAISER = '''
"""Drop-in stage that fails on purpose when the last message asks it to."""
from contextwarden import hookimpl

name = "raiser"


@hookimpl
def cw_request(ctx):
    if "PLEASE-RAISE" in str(ctx.original["messages"][-1]["content"]):
        raise RuntimeError("raiser failed on purpose")
'''

SLEEPER = f'''
"""Drop-in stage that overruns its budget when the last message asks it to."""
import time

from contextwarden import hookimpl

name = "sleeper"


@hookimpl
def cw_request(ctx):
    if "PLEASE-SLEEP" in str(ctx.original["messages"][-1]["content"]):
        time.sleep({SLEEP_S})
        ctx.emit("sleeper_woke")  # when the call ended: after its request went out, if that did not wait
'''

# A rewriting stage after the two: proves the pipeline really runs them (its change reaches the
# upstream when nothing failed) and that a failure earlier forwards the original instead.
TAGGER = '''
"""Drop-in stage that adds a metadata field, so a forwarded rewrite is visible upstream."""
from contextwarden import hookimpl

name = "marker"


@hookimpl
def cw_request(ctx):
    ctx.request.metadata = {"user_id": "rewritten-by-marker"}
'''

PROFILE = """
name: fail-open-e2e
extends: default
pipeline:
  order: [sleeper, raiser, marker]
  disabled: [budget, strip, tagging, clearing, compression, compaction, recall, memory, breakpoints]
  adaptive_budgets: false  # the fixed budget from the environment is what these tests pin
memory:
  enabled: false
"""


@pytest.fixture(scope="module")
def failopen_proxy(tmp_path_factory, standin):
    d = tmp_path_factory.mktemp("fail-open")
    plugins = d / "plugins"
    plugins.mkdir()
    for fname, src in (("raiser.py", RAISER), ("sleeper.py", SLEEPER), ("marker.py", TAGGER)):
        (plugins / fname).write_text(textwrap.dedent(src))
    profile = d / "fail-open.yaml"
    profile.write_text(PROFILE)
    p = ProxyProcess(d, name="fail-open", profile=profile, reverse=standin.url, plugins=plugins,
                     env={"CONTEXTWARDEN_PIPELINE__STAGE_BUDGET_MS": str(BUDGET_MS)})
    p.start()
    yield p
    p.stop()


def _body(i: int, word: str) -> bytes:
    return json.dumps({"model": "claude-opus-4-8", "max_tokens": 32,
                       "messages": [{"role": "user", "content": f"request {i}: {word}"}]}).encode()


def test_stages_loaded_from_folder(failopen_proxy, standin):
    [startup] = failopen_proxy.events("startup")
    assert startup["data"]["stages"] == ["sleeper", "raiser", "marker"]
    r = httpx.post(failopen_proxy.url + "/v1/messages", content=_body(0, "nothing special"),
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 200
    [rec] = standin.requests()
    assert rec.json()["metadata"] == {"user_id": "rewritten-by-marker"}


def test_hundred_of_hundred_succeed(failopen_proxy, standin):
    since = failopen_proxy.mark()
    bodies = {i: _body(i, "PLEASE-RAISE" if i % 2 else "PLEASE-SLEEP") for i in range(100)}

    def send(i: int) -> tuple[int, int, bytes]:
        with httpx.Client(timeout=30) as c:
            r = c.post(failopen_proxy.url + f"/v1/messages?n={i}", content=bodies[i],
                       headers={"content-type": "application/json", "x-api-key": "sk-ant-failopen"})
            return i, r.status_code, r.content

    # two clients at once: concurrency without piling up the abandoned sleepers in the stage pool
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(send, range(100)))
    assert [s for _, s, _ in results] == [200] * 100
    assert all(json.loads(body)["content"][0]["text"] for _, _, body in results)

    errors = failopen_proxy.wait_events(lambda e: e["type"] == "error" and e["data"].get("where") == "stage", 100,
                                        since=since)
    flows = {e["flow_id"]: int(e["data"]["path"].split("n=")[1]) for e in failopen_proxy.events("request", since=since)}
    assert sorted(flows.values()) == list(range(100))
    per_request: dict[int, list] = {i: [] for i in range(100)}
    for e in errors:
        per_request[flows[e["flow_id"]]].append((e["data"]["stage"], e["data"]["message"], e["data"]["action"]))

    def is_skip(e: tuple) -> bool:
        return e[0] == "sleeper" and e[1].startswith("stage sleeper skipped: its call of ") and e[2] == "stage skipped, other stages ran"

    # A stage that raised or overran costs its request the whole rewrite: the client's bytes go upstream.
    # While an overrun call still runs, the breaker skips that stage at once and the others' (valid) work
    # is sent: here the marker's.
    seen = {r.path: r.body for r in standin.requests("/v1/messages")}
    assert len(seen) == 100
    timeouts = 0
    for i, errs in per_request.items():
        sent = seen[f"/v1/messages?n={i}"]
        breaker = [e for e in errs if is_skip(e)]
        own = [e for e in errs if not is_skip(e)]
        assert len(breaker) <= 1, (i, errs)
        if i % 2:
            assert own == [("raiser", "RuntimeError: raiser failed on purpose", "forwarded original")], (i, errs)
            assert sent == bodies[i], i
        elif breaker:
            assert own == [], (i, errs)
            assert json.loads(sent) == {**json.loads(bodies[i]), "metadata": {"user_id": "rewritten-by-marker"}}, i
        else:
            assert own == [("sleeper", f"ran past its {BUDGET_MS} ms budget", "forwarded original")], (i, errs)
            assert sent == bodies[i], i
            timeouts += 1

    stages = failopen_proxy.events("stage", since=since)
    assert sum(1 for e in stages if e["data"]["stage"] == "sleeper" and e["data"]["status"] == "timeout") == timeouts >= 1
    assert sum(1 for e in stages if e["data"]["stage"] == "raiser" and e["data"]["status"] == "error") == 50
    forwards = failopen_proxy.wait_events(lambda e: e["type"] == "forward", 100, since=since)
    changed = {flows[e["flow_id"]] for e in forwards if e["data"]["changed"]}
    assert len(forwards) == 100
    assert changed == {i for i, errs in per_request.items() if i % 2 == 0 and any(map(is_skip, errs))}
    # the overrun stage did not hold its request for the whole sleep: each such request went out before
    # its sleeper call ended (event order, not milliseconds: on a loaded machine both can be late)
    timed_out = {e["flow_id"] for e in stages if e["data"]["stage"] == "sleeper" and e["data"]["status"] == "timeout"}
    woke = {e["flow_id"]: e["seq"] for e in failopen_proxy.wait_events(lambda e: e["type"] == "sleeper_woke",
                                                                       len(timed_out), since=since)}
    assert timed_out and timed_out <= set(woke)
    assert all(e["seq"] < woke[e["flow_id"]] for e in forwards if e["flow_id"] in timed_out)
    assert failopen_proxy.alive
