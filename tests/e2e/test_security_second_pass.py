"""Issue 37 (security, second pass), through real mitmdump processes and the strict stand-in:

1. the documented ``mitmdump -s addons/contextwarden.py`` never accepts a connection on a non-loopback
   address, not even while it starts (no socket on every interface at all);
3. two clients without a credential that send the same session id (or the same first message) from two
   addresses share no memory;
4. the local API's session commands apply the caller's tenant: user B neither lists nor compacts A's session;
5. ``remember`` without a credential is refused, never filed under the tenant of the latest request;
6. everything under the data directory is 0600 (files) in 0700 (folders) after a live session;
7. a request nested too deep goes out unchanged with an ``error`` event and no traceback in the output
   (255 to 1,023 levels printed one on f105a14: parsed, then too deep for orjson to write; 10,000 is
   refused by the parser already).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import stat
import threading
import uuid
from pathlib import Path

import httpx
import pytest
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow

from contextwarden.addons.exposure import Exposure
from contextwarden.memory.api import ApiError, RecallClient
from contextwarden.tui.app import ContextWardenApp
from contextwarden.util.home import ensure_home
from contextwarden.util.redact import tenant_id
from tests.e2e.test_security import DocumentedCommand, _fact_and_question, _listening, _local_addresses, _wait_ingested
from tests.support.proxy import ProxyProcess
from tests.support.wait import wait_until

READY = ("startup", "memory_status")
PROFILE = """
extends: default
name: security-second-pass
memory: {min_score: 0.0, timeout_ms: 20000}
pipeline: {stage_budget_ms: 30000}
log: {record_bodies: true}
"""
KEY_A = "sk-ant-api03-" + "a" * 40
KEY_B = "sk-ant-api03-" + "b" * 40


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, standin):
    d = tmp_path_factory.mktemp("second-pass")
    (d / "profile.yaml").write_text(PROFILE)
    p = ProxyProcess(d / "p", name="p", profile=d / "profile.yaml", reverse=standin.url, ready_events=READY)
    with p:
        yield p


def _post(proxy: ProxyProcess, messages: list, *, session: str | None = None, headers: dict | None = None,
          source: str = "127.0.0.1") -> httpx.Response:
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": messages}).encode()
    h = {"content-type": "application/json", "anthropic-version": "2023-06-01", **(headers or {})}
    if session is not None:
        h["X-Contextwarden-Session"] = session
    transport = httpx.HTTPTransport(local_address=source)  # the client's own address
    with httpx.Client(trust_env=False, timeout=60, transport=transport) as c:
        r = c.post(proxy.url + "/v1/messages", content=body, headers=h)
        r.read()
    assert r.status_code == 200, r.text[:400]
    return r


# --- 1. no socket on an address nobody chose -----------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Knocker:
    """Connects to ``addr:port`` over and over in a thread, counting the connections accepted."""

    def __init__(self, addr: str, port: int) -> None:
        self.addr, self.port = addr, port
        self.tries = self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.tries += 1
            try:
                socket.create_connection((self.addr, self.port), timeout=0.5).close()
                self.accepted += 1
            except OSError:
                pass
            self.stop.wait(0.001)


@pytest.mark.parametrize("mode", [[], ["--mode", "reverse:http://127.0.0.1:9"]], ids=["regular", "reverse"])
def test_the_documented_command_accepts_nothing_off_loopback_while_it_starts(tmp_path, mode):
    port = _free_port()
    # a non-loopback address of this machine; without one, 127.0.0.2 (on loopback, but not 127.0.0.1,
    # where the proxy is to listen: a socket on every interface would accept it too)
    addr = (_local_addresses() or ["127.0.0.2"])[0]

    class Documented(DocumentedCommand):
        def command(self) -> list[str]:
            cmd = super().command()
            cmd[cmd.index("--listen-port") + 1] = str(port)
            return cmd + mode

    p = Documented(tmp_path / "doc", name="doc", profile="observe-only")
    knock = Knocker(addr, port)
    knock.thread.start()  # knocking before mitmdump even runs: through all of its start-up
    try:
        p.start()
        ready_at = knock.tries
        while knock.tries < ready_at + 200:  # and on after it is up
            knock.stop.wait(0.01)
        # once up: its sockets are on loopback only, it said so, and it answers there and nowhere else
        assert wait_until(lambda: "contextwarden: listening on 127.0.0.1 only" in p.output_text(), 5)
        addrs = _listening(port)
        assert addrs and all(a in ("0100007F", "00000000000000000000000001000000") for a in addrs), addrs
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        for other in _local_addresses():
            with pytest.raises(OSError):
                socket.create_connection((other, port), timeout=2).close()
    finally:
        knock.stop.set()
        knock.thread.join()
        p.stop()
    out = p.output_text()
    assert ready_at > 0 and knock.accepted == 0, (knock.tries, knock.accepted)
    assert "proxy listening at *" not in out and f"listening at 127.0.0.1:{port}" in out, out[-2000:]


def test_a_connection_to_an_address_nobody_chose_is_closed_unread():
    """The fallback should a mitmproxy bind before the script loads: such a connection is refused at
    once (on 12, no such socket exists: the test above)."""
    guard = Exposure()
    guard.forced = True  # no listen_host given: the addon chose loopback
    cases = {("regular", "192.0.2.2"): True, ("reverse:http://x", "10.1.2.3"): True, ("regular", "127.0.0.1"): False,
             ("regular@0.0.0.0:8080", "192.0.2.2"): False,  # the user's own choice of address
             ("transparent", "192.0.2.2"): False}  # the original destination, not the listening socket
    for (mode, addr), refused in cases.items():
        client = tflow.tclient_conn()
        client.proxy_mode, client.sockname, client.error = ProxyMode.parse(mode), (addr, 8080), None
        guard.client_connected(client)
        assert (client.error is not None) is refused, (mode, addr)


# --- 3. a tenant no one reaches by guessing -------------------------------------------------------------
@pytest.mark.parametrize("named", [True, False], ids=["same session id", "same first message"])
def test_anonymous_clients_from_two_addresses_never_share_memory(proxy, standin, named):
    tag = uuid.uuid4().hex[:8]
    fact, question, secret = _fact_and_question(tag)
    session = f"same-{tag}" if named else None
    opening = [{"role": "user", "content": f"Good morning, let us plan the week ({tag})."},
               {"role": "assistant", "content": "Sure. What do you need?"}]
    since = proxy.mark()
    _post(proxy, opening + [{"role": "user", "content": fact}], session=session, source="127.0.0.1")
    _wait_ingested(proxy, since, 1)
    ask = opening + [{"role": "user", "content": question}]

    standin.reset()
    _post(proxy, ask, session=session, source="127.0.0.2")  # the other user: same session, same opening
    assert secret not in standin.requests()[-1].body.decode(), "another address's memory was injected"
    standin.reset()
    _post(proxy, ask, session=session, source="127.0.0.1")  # the control: the same user gets it back
    assert secret in standin.requests()[-1].body.decode()
    tenants = [e["data"]["tenant"] for e in proxy.wait_events(lambda e: e["type"] == "request", 3, since=since)]
    assert len(tenants) == 3 and tenants[0] == tenants[2] != tenants[1]


# --- 4, 5. the local API applies the caller's tenant before anything else -------------------------------
def test_session_commands_see_and_change_the_callers_own_sessions_only(proxy):
    tag = uuid.uuid4().hex[:8]
    _post(proxy, [{"role": "user", "content": f"hello from A {tag}"}], session=f"sa-{tag}", headers={"x-api-key": KEY_A})
    _post(proxy, [{"role": "user", "content": f"hello from B {tag}"}], session=f"sb-{tag}", headers={"x-api-key": KEY_B})
    a, b = RecallClient.find(proxy.home, KEY_A), RecallClient.find(proxy.home, KEY_B)
    listed_b = {r["session"] for r in b.call("session", action="list")["sessions"]}
    assert f"sb-{tag}" in listed_b and f"sa-{tag}" not in listed_b
    assert {r["tenant"] for r in b.call("session", action="list")["sessions"]} == {tenant_id(KEY_B, _salt(proxy))}
    for action in ("compact", "show", "pin"):
        with pytest.raises(ApiError) as e:
            b.call("session", action=action, session=f"sa-{tag}", target="index:0")
        assert e.value.status == 400 and "no session" in str(e.value)
    assert not a.call("session", action="show", session=f"sa-{tag}")["compact_now"]  # B changed nothing
    assert a.call("session", action="compact", session=f"sa-{tag}")["compact_now"] is True


def _salt(proxy: ProxyProcess) -> str:
    return (proxy.home / "tenant.salt").read_text().strip()


def test_remember_without_a_credential_is_refused_not_filed_under_the_latest_tenant(proxy, standin):
    tag = uuid.uuid4().hex[:8]
    note = f"The deploy freeze code word is marmalade-{tag}."
    _post(proxy, [{"role": "user", "content": f"What is new today ({tag})?"}], session=f"r-{tag}", headers={"x-api-key": KEY_A})
    token_only = RecallClient.find(proxy.home)
    with pytest.raises(ApiError) as e:
        token_only.call("remember", text=note)
    assert e.value.status == 400
    # named explicitly, it goes where it is told
    other = tenant_id("sk-ant-api03-" + "c" * 40, _salt(proxy))
    assert token_only.call("remember", text=note, tenant=other)["tenant"] == other
    standin.reset()
    _post(proxy, [{"role": "user", "content": "What is the deploy freeze code word?"}], session=f"r2-{tag}",
          headers={"x-api-key": KEY_A})
    assert f"marmalade-{tag}" not in standin.requests()[-1].body.decode()


# --- 6. the data directory is this user's only ------------------------------------------------------------
def test_every_file_under_the_data_directory_is_private_after_a_live_session(proxy):
    tag = uuid.uuid4().hex[:8]
    since = proxy.mark()
    for i in range(2):
        _post(proxy, [{"role": "user", "content": f"turn {i} of a session about parsing logs ({tag})"}],
              session=f"m-{tag}", headers={"x-api-key": KEY_A})
    _wait_ingested(proxy, since, 2)
    loose = []
    for root, dirs, files in os.walk(proxy.home):
        for name in dirs + files:
            p = Path(root) / name
            mode = p.lstat().st_mode
            if stat.S_ISLNK(mode):
                continue
            if stat.S_IMODE(mode) & 0o077:
                loose.append(f"{p.relative_to(proxy.home)} {oct(stat.S_IMODE(mode))}")
    assert stat.S_IMODE(proxy.home.stat().st_mode) == 0o700
    assert (proxy.home / "logs" / "events.jsonl").exists() and (proxy.home / "chroma").is_dir()
    assert any((proxy.home / "bodies").rglob("*.json"))  # recorded bodies
    assert loose == []


def test_a_tui_export_is_private(tmp_path):
    out = ContextWardenApp.write_export(tmp_path / "exports" / "session.json", {"kind": "contextwarden.session"})
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and stat.S_IMODE(out.parent.stat().st_mode) == 0o700


# --- 7. deep input fails open quietly ------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [300, 1000, 10_000])
def test_deep_input_goes_unchanged_with_an_error_event_and_no_traceback(proxy, standin, depth):
    nested = "[" * depth + "]" * depth
    raw = ('{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":[{"type":"text",'
           '"text":"hi","extra":' + nested + '}]}]}').encode()
    since, printed = proxy.mark(), len(proxy.output_text())
    with httpx.Client(trust_env=False, timeout=60) as c:  # (the stand-in itself refuses 10,000 levels: a 400)
        c.post(proxy.url + "/v1/messages", content=raw, headers={"content-type": "application/json"}).read()
    assert standin.requests()[-1].body == raw  # forwarded byte for byte
    errors = proxy.wait_events(lambda e: e["type"] == "error", since=since)
    assert errors and errors[0]["data"]["action"] == "forwarded unchanged"
    out = proxy.output_text()[printed:]
    assert "Traceback" not in out and "prepare failed" not in out, out[-3000:]
    assert not re.search(r"Recursion limit reached\n", out)


def test_behind_a_proxy_credential_its_user_not_the_address_scopes_an_anonymous_request(tmp_path, standin):
    """With ``proxyauth`` the origin is the credential's user: the same user from two addresses is one
    tenant, through the engine process too (the user crosses with the flow)."""
    p = ProxyProcess(tmp_path / "auth", name="auth", profile="observe-only", redirect=standin.url,
                     options={"proxyauth": "alice:pw-1"})
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 64,
                       "messages": [{"role": "user", "content": "hello"}]}).encode()
    with p:
        since = p.mark()
        for source in ("127.0.0.1", "127.0.0.2"):  # a forward-proxy request in plain HTTP, from each address
            conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=60, source_address=(source, 0))
            conn.request("POST", "http://api.anthropic.com/v1/messages", body,
                         {"content-type": "application/json", "anthropic-version": "2023-06-01",
                          "X-Contextwarden-Session": "s-auth",
                          "Proxy-Authorization": "Basic " + base64.b64encode(b"alice:pw-1").decode()})
            r = conn.getresponse()
            assert r.status == 200, r.read()[:300]
            conn.close()
        tenants = [e["data"]["tenant"] for e in p.wait_events(lambda e: e["type"] == "request", 2, since=since)]
    assert len(tenants) == 2 and tenants[0] == tenants[1], tenants


def test_a_home_an_older_version_left_open_is_closed_whole(tmp_path):
    """A data directory written before the modes were set (0755 folders, 0644 files) is closed at the
    next start, everything under it: the files it already holds are as private as new ones."""
    home = tmp_path / "old-home"
    (home / "chroma" / "seg").mkdir(parents=True)
    for f in (home / "events.jsonl", home / "chroma" / "chroma.sqlite3", home / "chroma" / "seg" / "data.bin"):
        f.write_bytes(b"x")
        f.chmod(0o644)
    for d in (home, home / "chroma", home / "chroma" / "seg"):
        d.chmod(0o755)
    ensure_home(home)
    opened = [p for p in [home, *home.rglob("*")] if p.stat().st_mode & 0o077]
    assert opened == []
