"""What a new user trips over in the first hour (issue 39): a second start, a bad profile, a busy port.

Real processes: ``contextwarden run`` and ``mitmdump -s addons/contextwarden.py`` beside a running proxy.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx2
import orjson
import pytest

from contextwarden.core.liveprotocol import Totals
from contextwarden.tui.store import Store
from contextwarden.tui.widgets.request_log import detail_text
from tests.e2e.conftest import expected_upstream_headers, route_for
from tests.e2e.test_transparency import CASES, _fresh, _fresh_key, headers_for
from tests.support import rawhttp
from tests.support.marked import run_marked
from tests.support.proxy import MITMDUMP, SCRIPT, ProxyProcess, free_port
from tests.support.sdk import anthropic, openai

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "contextwarden"]
DISCOVERY = ("tui.json", "recall-api.json")


def _run_marked(cmd: list[str], home: Path, timeout: float = 120) -> tuple[subprocess.CompletedProcess, str]:
    """Run ``cmd`` with ``home`` as its data directory; return once it and every process it started are gone."""
    done = run_marked(cmd, {**os.environ, "CONTEXTWARDEN_HOME": str(home)}, timeout)
    return done, done.stdout + done.stderr


@pytest.fixture
def running(observe_regular):
    """A running proxy (the shared observe-only one in regular mode) for the three checks below: each only
    reads its port and discovery files, and compares the files with what they were before it."""
    before = {name: (observe_regular.home / name).read_bytes() for name in DISCOVERY}
    assert all(orjson.loads(b)["pid"] for b in before.values())
    return observe_regular, before


def test_a_second_run_on_the_same_port_leaves_the_running_proxy_reachable(running):
    proxy, before = running
    done, out = _run_marked(CLI + ["run", "--home", str(proxy.home), "--profile", "observe-only",
                                   "--port", str(proxy.port)], proxy.home)
    assert done.returncode == 1, out
    # the hint names this command's option, not mitmproxy's --mode regular@PORT
    assert f"--port {proxy.port + 2}" in out and "--mode" not in out, out
    assert {name: (proxy.home / name).read_bytes() for name in DISCOVERY} == before
    session = subprocess.run(CLI + ["session", "--home", str(proxy.home), "list"], capture_output=True, text=True,
                             timeout=60)
    assert session.returncode == 0 and "no proxy" not in (session.stdout + session.stderr).lower(), session.stderr


def test_a_second_mitmdump_that_cannot_listen_leaves_the_files_alone(running):
    proxy, before = running
    done, out = _run_marked([str(MITMDUMP), "-s", str(SCRIPT), "--listen-host", "127.0.0.1", "--listen-port",
                             str(proxy.port), "--set", f"cw_home={proxy.home}", "--set", "cw_profile=observe-only",
                             "--set", f"confdir={proxy.confdir}"], proxy.home)
    assert done.returncode != 0 and "address already in use" in out, out
    assert {name: (proxy.home / name).read_bytes() for name in DISCOVERY} == before


def test_a_bad_profile_under_mitmdump_starts_nothing_and_overwrites_nothing(running):
    proxy, before = running
    # its default data directory is the running proxy's: a start with the default profile would write there
    done, out = _run_marked([str(MITMDUMP), "-s", str(SCRIPT), "--listen-host", "127.0.0.1", "--listen-port", "0",
                             "--set", "cw_profile=claude-cod", "--set", f"confdir={proxy.confdir}"], proxy.home)
    assert done.returncode != 0 and "unknown profile 'claude-cod'" in out, out
    assert "contextwarden: profile" not in out and "event server on" not in out, out  # no normal start-up first
    assert {name: (proxy.home / name).read_bytes() for name in DISCOVERY} == before


def test_run_accepts_connection_strategy_again_after_the_double_dash(tmp_path):
    done = subprocess.run(CLI + ["run", "--home", str(tmp_path / "h"), "--dry-run", "--",
                                 "--set", "connection_strategy=lazy"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("connection_strategy=") == 1, done.stdout


@pytest.mark.parametrize("label", ["active-reverse", "active-regular"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_bypass_header_sends_the_request_untouched_and_says_so(request, standin, label, case):
    """``x-contextwarden-bypass: 1``: the active profile's request goes byte for byte, without the header;
    its TUI row reads ``bypass``; the answer carries the proxy's own time in ``x-contextwarden-overhead-ms``."""
    route = route_for(request, label)
    path, openai_host, body, extra = CASES[case]
    body = _fresh(body)
    sent = headers_for(route, openai_host, _fresh_key(extra)) + [("Content-Length", str(len(body)))]
    since = route.proxy.mark()
    resp = rawhttp.exchange(route.socket(openai_host), rawhttp.build_request(
        "POST", path, sent[:2] + [("X-Contextwarden-Bypass", "1")] + sent[2:], body))
    assert resp.status == 200, resp.body
    [rec] = standin.requests()
    assert rec.body == body and rec.headers == expected_upstream_headers(route, sent, standin)
    assert float(resp.header("x-contextwarden-overhead-ms")) >= 0
    [ev] = route.proxy.wait_events(lambda e: e["type"] == "request", 1, since=since)
    assert ev["data"]["mode"] == "bypass"
    store = Store()
    store.apply(route.proxy.events(since=since))
    row = store.requests[ev["flow_id"]]
    assert row.mode == "bypass" and "bypass" in detail_text(row).plain


@pytest.mark.parametrize("engine", [True, False], ids=["engine", "in-process"])
def test_an_unreachable_upstream_answers_in_the_providers_error_shape(tmp_path, engine):
    """Nothing listens where the proxy forwards: the SDKs get a 502 in their provider's JSON error shape
    (an InternalServerError they retry), not mitmproxy's HTML page; the TUI's overview counts the error."""
    dead = f"http://127.0.0.1:{free_port()}"  # (connection_strategy=lazy as contextwarden run sets: eager, mitmproxy
    # connects at the client's connect, and a refused upstream closes it before there is a request to answer)
    with ProxyProcess(tmp_path / "px", profile="observe-only", reverse=dead, env={"CONTEXTWARDEN_MEMORY__ENABLED": "false"},
                      options={"connection_strategy": "lazy", **({} if engine else {"cw_engine": "false"})}) as proxy:
        client = anthropic.Anthropic(api_key="sk-ant-dead", base_url=proxy.url, max_retries=0,
                                     http_client=httpx2.Client(trust_env=False, timeout=30))
        with pytest.raises(anthropic.InternalServerError) as e:
            client.messages.create(model="claude-sonnet-4-6", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
        assert e.value.status_code == 502 and e.value.body["type"] == "error", e.value.body
        assert e.value.body["error"]["type"] == "api_error" and "could not be reached" in e.value.body["error"]["message"]
        assert float(e.value.response.headers["x-contextwarden-overhead-ms"]) >= 0
        oai = openai.OpenAI(api_key="sk-dead", base_url=proxy.url + "/v1", max_retries=0,
                            http_client=httpx2.Client(trust_env=False, timeout=30))
        with pytest.raises(openai.InternalServerError) as e2:
            oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert e2.value.status_code == 502 and e2.value.body["type"] == "server_error", e2.value.body
        other = httpx2.get(proxy.url + "/not-an-api", trust_env=False, timeout=30)  # other traffic: mitmproxy's page
        assert other.status_code == 502 and other.headers["content-type"].startswith("text/html")
        evs = proxy.wait_events(lambda ev: ev["type"] == "response" and ev["data"].get("error"), 2)
        totals = Totals()
        for ev in proxy.events():
            totals.add(ev)
        assert len(evs) == 2 and totals.errors >= 2


def test_an_unreachable_upstream_answers_an_http2_client_in_the_providers_error_shape(tmp_path):
    """Regular mode, a client that negotiates HTTP/2 with the proxy (as curl and Rust's reqwest, Codex's HTTP
    client, do): the failed stream gets the provider's JSON error, not mitmproxy's page; other traffic on the
    same connection keeps the page."""
    dead = f"http://127.0.0.1:{free_port()}"
    with ProxyProcess(tmp_path / "px", profile="observe-only", redirect=dead, env={"CONTEXTWARDEN_MEMORY__ENABLED": "false"}) as proxy, \
            httpx2.Client(http2=True, proxy=proxy.url, verify=ssl.create_default_context(cafile=proxy.ca_pem),
                          trust_env=False, timeout=30) as client:
        r = client.post("https://api.anthropic.com/v1/messages", json={"model": "claude-sonnet-4-6", "max_tokens": 8,
                                                                        "messages": [{"role": "user", "content": "hi"}]},
                        headers={"x-api-key": "sk-ant-dead", "anthropic-version": "2023-06-01"})
        assert r.http_version == "HTTP/2"
        assert r.status_code == 502 and r.headers["content-type"] == "application/json", (r.headers, r.text[:300])
        assert r.json()["type"] == "error" and "could not be reached" in r.json()["error"]["message"]
        other = client.post("https://api.anthropic.com/not-an-api", content=b"{}")
        assert other.status_code == 502 and other.headers["content-type"].startswith("text/html")
