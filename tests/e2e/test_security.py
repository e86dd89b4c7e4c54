"""Issue 11 and issue 10's privacy-stage bullet, through real mitmdump processes:

- every secret kind the redactor knows, plus URL-query and custom-header credentials, sent through a
  proxy with every stage and memory on, is found 0 times under its data directory (every file: SQLite,
  Chroma, the lexical snapshot), in its logs, its output and the TUI's event stream;
- memory is never shared between users who carry no credential, an unrecognised one, or OAuth vs API keys;
- the documented ``mitmdump -s addons/contextwarden.py`` does not answer on a non-loopback address (the
  check is in test_security_second_pass.py, which also knocks while it starts);
- a privacy stage placed before memory (loaded with ``plugins=``) is not undone by memory.
"""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import threading
import time
import uuid
import zipfile
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from contextwarden.core.liveprotocol import INFO_FILE, TOKEN_HEADER
from tests.contextwarden.util.test_redact import _alnum, _windows, planted
from tests.support.proxy import ProxyProcess, start_together, stop_together
from tests.support.wait import INGEST_BOUND_S, wait_until

ROOT = Path(__file__).resolve().parents[2]
PRIVACY_PLUGIN = ROOT / "examples" / "plugins" / "redact_emails.py"
READY = ("startup", "memory_status")

# every stage on, with thresholds small enough that a short conversation is cleared and compacted
# (memory embeds in its ingestion thread, niced: at idle priority the suite's other workers hold the
# embeddings back for minutes, and the tests wait for them)
ALL_STAGES = """
extends: default
name: security-e2e
tokens: {context_window: 24000}
budget: {enabled: true, session_tokens: 100000000, agent_tokens: 100000000}
clearing: {trigger_tokens: 1500, keep_recent: 2, clear_at_least: 200, min_result_tokens: 50}
compaction: {soft_threshold: 0.05, hard_threshold: 0.08, target: 0.03, protect_recent_turns: 1, min_span_tokens: 200}
memory: {min_score: 0.0, timeout_ms: 20000, embed_idle: false}
pipeline: {stage_budget_ms: 30000}
"""
PRIVACY = """
extends: default
name: privacy-e2e
pipeline: {order: [redact_emails, budget, strip, tagging, clearing, compaction, memory], stage_budget_ms: 30000}
memory: {min_score: 0.0, timeout_ms: 20000, embed_idle: false}
"""


@pytest.fixture(scope="module")
def proxies(tmp_path_factory, standin):
    """Two proxies in reverse mode to the stand-in, started together (their warm-ups overlap)."""
    d = tmp_path_factory.mktemp("security")
    (d / "all.yaml").write_text(ALL_STAGES)
    (d / "privacy.yaml").write_text(PRIVACY)
    plugins = d / "plugins"
    plugins.mkdir()
    (plugins / "redact_emails.py").write_text(PRIVACY_PLUGIN.read_text())
    procs = {"all": ProxyProcess(d / "all", name="all", profile=d / "all.yaml", reverse=standin.url, ready_events=READY),
             "privacy": ProxyProcess(d / "privacy", name="privacy", profile=d / "privacy.yaml", reverse=standin.url,
                                     plugins=plugins, ready_events=READY)}
    start_together(procs.values())
    try:
        yield procs
    finally:
        stop_together(procs.values())


def _post(proxy: ProxyProcess, messages: list, *, session: str, headers: dict | None = None, path: str = "/v1/messages",
          stream: bool = False, tools: bool = True) -> httpx.Response:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": stream, "messages": messages}
    if tools:
        body["tools"] = [{"name": "Bash", "description": "run a command", "input_schema": {"type": "object"}}]
    h = {"content-type": "application/json", "anthropic-version": "2023-06-01", "X-Contextwarden-Session": session,
         **(headers or {})}
    with httpx.Client(trust_env=False, timeout=60) as c:
        r = c.post(proxy.url + path, content=json.dumps(body).encode(), headers=h)
        r.read()
    assert r.status_code == 200, r.text[:400]
    return r


def _wait_ingested(proxy: ProxyProcess, since: int, turns: int, quiet: float = 2.0) -> None:
    """Until ``turns`` turns are complete and memory has stored them: the ingestor reported an empty
    queue after the last turn, and nothing more for ``quiet`` seconds (it stores turns in batches). It
    waits as long as that takes while the proxy runs (embedding lags behind under load); a proxy that
    exits fails at once."""
    def turns_done() -> list[dict]:
        assert proxy.alive, proxy.output_text()[-3000:]
        done = proxy.events("turn", since=since, wait=0)
        return done if len(done) >= turns else []
    done = wait_until(turns_done, INGEST_BOUND_S, interval=0.1)
    assert done, f"{len(proxy.events('turn', since=since, wait=0))} of {turns} turns completed"
    last_turn = done[-1]["seq"]
    seen: list = [None, time.monotonic()]  # the latest "ingested" event, and when it came

    def stored() -> bool:
        assert proxy.alive, proxy.output_text()[-3000:]
        ingested = [e for e in proxy.events("memory", since=since, wait=0) if "ingested" in e["data"]]
        if ingested and (seen[0] is None or ingested[-1]["seq"] != seen[0]["seq"]):
            seen[:] = [ingested[-1], time.monotonic()]
        return seen[0] is not None and seen[0]["seq"] > last_turn and seen[0]["data"].get("queued") == 0 \
            and time.monotonic() - seen[1] >= quiet
    assert wait_until(stored, INGEST_BOUND_S, interval=0.1), f"memory did not finish storing {turns} turns; last: {seen[0]}"


class TuiTap:
    """Connects to the event server the way ``contextwarden tui`` does and keeps every message it gets."""

    def __init__(self, home: Path) -> None:
        info = json.loads((home / INFO_FILE).read_text())
        self.ws = connect(f"ws://127.0.0.1:{info['port']}/", additional_headers={TOKEN_HEADER: info["token"]},
                          proxy=None, max_size=None, legacy=True)  # (held open, not in a with block)
        self.raw: list[bytes] = []
        self._lock = threading.Lock()
        self._replies: dict[int, dict] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for msg in self.ws:
                data = msg.encode() if isinstance(msg, str) else msg
                with self._lock:
                    self.raw.append(data)
                try:
                    d = json.loads(data)
                except ValueError:
                    continue
                if isinstance(d, dict) and "id" in d:
                    self._replies[d["id"]] = d
        except Exception:
            pass

    def command(self, timeout: float = 30, **cmd) -> dict:
        cmd["id"] = n = len(self._replies) + 1000 + int(time.monotonic() * 1000) % 100000
        self.ws.send(json.dumps(cmd))
        reply = wait_until(lambda: self._replies.get(n), timeout)
        assert reply, f"no reply to {cmd}"
        return reply

    def events(self) -> int:
        n = 0
        with self._lock:
            for data in self.raw:
                try:
                    d = json.loads(data)
                except ValueError:
                    continue
                n += len(d.get("events") or []) if isinstance(d, dict) else 0
        return n

    def blob(self) -> bytes:
        with self._lock:
            return b"\n".join(self.raw)

    def close(self) -> None:
        self.ws.close()
        self._thread.join(5)


def _files_blob(home: Path) -> dict[str, bytes]:
    """Every file under the data directory, archive members (the lexical .npz) unpacked too."""
    out = {}
    for p in home.rglob("*"):
        if not p.is_file():
            continue
        data = p.read_bytes()
        out[str(p.relative_to(home))] = data
        if data[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                for name in z.namelist():
                    out[f"{p.relative_to(home)}:{name}"] = z.read(name)
    return out


def _found(secret: str, where: dict[str, bytes]) -> list[str]:
    pieces = [w.encode() for w in _windows(secret)]
    return [name for name, blob in where.items() if any(piece in blob for piece in pieces)]


# --- 1. secrets ------------------------------------------------------------------------------------------
def test_no_secret_on_disk_in_the_logs_the_output_or_the_tui_stream(proxies, standin):
    proxy = proxies["all"]
    plants = planted()
    canary = "zephyrcanary" + uuid.uuid4().hex[:8]
    api_key = "sk-ant-api03-" + _alnum(60) + "AA"
    custom = "cx9" + _alnum(30)
    query = {"api_key": _alnum(28), "sig": _alnum(24), "token": _alnum(26)}
    url_secrets = {f"query_{k}": v for k, v in query.items()}
    all_secrets = {**{k: s for k, (s, _) in plants.items()}, **url_secrets, "custom_header": custom, "x_api_key": api_key}
    path = "/v1/messages?beta=true&" + "&".join(f"{k}={v}" for k, v in query.items())
    headers = {"x-api-key": api_key, "x-custom-auth-value": custom}
    texts = [t for _, t in plants.values()]
    kinds = list(plants)
    session = f"sec-{uuid.uuid4().hex[:8]}"

    tap = TuiTap(proxy.home)
    since = proxy.mark()
    history: list[dict] = [{"role": "user", "content": f"{canary} round 0: {plants[kinds[0]][1]}"}]
    _post(proxy, history, session=session, headers=headers, path=path)
    rounds = 6
    for r in range(rounds):
        history.append({"role": "assistant", "content": [
            {"type": "text", "text": f"Checking round {r}."},
            {"type": "tool_use", "id": f"toolu_{r:04d}", "name": "Bash",
             "input": {"command": plants[kinds[(r + 3) % len(kinds)]][1]}}]})
        # each secret once in a tool result, one at the head of each (the clearing stub's preview)
        dump = f"{texts[r]}\n$ env\n" + "\n".join(texts[r::rounds]) + "\n" + "\n".join(
            f"LINE_{i}=value {i} of round {r}" for i in range(25))
        history.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_{r:04d}", "content": dump},
            {"type": "text", "text": f"{canary} next, round {r + 1}: {plants[kinds[(r + 7) % len(kinds)]][1]}"}]})
        _post(proxy, history, session=session, headers=headers, path=path, stream=r % 2 == 1)
    _wait_ingested(proxy, since, rounds + 1)
    # a new session of the same user: memory brings the (redacted) past back into the request
    _post(proxy, [{"role": "user", "content": f"{canary}: what was in the env dump of round 0?"}],
          session=session + "-b", headers=headers, path=path)
    _wait_ingested(proxy, since, rounds + 2, quiet=0.5)

    evs = proxy.events(since=since)
    assert any(e["type"] == "clearing" and e["data"].get("cleared") for e in evs), "nothing was cleared"
    assert any(e["type"] == "compaction" and e["data"].get("summary_tokens") for e in evs), "nothing was compacted"
    assert any(e["type"] == "memory" and e["data"].get("injected") for e in evs), "nothing was injected"
    assert "REDACTED" in standin.requests()[-1].body.decode()  # what memory brought back was redacted
    # what the TUI can ask for: a request's bodies (the inspector) and the session's export
    flow = next(e["flow_id"] for e in reversed(evs) if e["type"] == "request" and e["session"] == session)
    assert "original" in tap.command(cmd="bodies", flow_id=flow).get("result", {})
    assert tap.command(cmd="export", session=session).get("result", {}).get("requests")
    assert wait_until(lambda: tap.events() > 0, 5)
    tui = tap.blob()
    tap.close()
    proxy.stop()  # the log flushed, Chroma closed, the lexical snapshot written

    where = _files_blob(proxy.home)
    assert any(name.endswith(".npz") for name in where) and any("chroma" in name for name in where)
    where |= {"stdout": proxy.stdout_text().encode(), "stderr": proxy.stderr_text().encode(), "tui stream": tui}
    # the scan can see: ordinary text of the conversation is there
    assert _found(canary, where) and _found(canary, {"tui": tui}) and _found(canary, {k: v for k, v in where.items()
                                                                                   if "chroma" in k})
    leaks = {kind: _found(secret, where) for kind, secret in all_secrets.items()}
    assert {k: v for k, v in leaks.items() if v} == {}


# --- 2. tenants ------------------------------------------------------------------------------------------
def _fact_and_question(tag: str) -> tuple[str, str, str]:
    secret = f"{3000 + int(tag[:3], 16) % 999}-falcon-{tag}"
    return (f"Remember this: my gym locker combination is {secret}.", "What is my gym locker combination?", secret)


def test_users_without_a_known_credential_never_share_memory(proxies, standin):
    proxy = proxies["privacy"]  # the secrets test stops the other one to read its files
    cases = {  # who stores, who asks: never the same tenant
        "none": ({}, {}),
        "google": ({"x-goog-api-key": "AIza" + _alnum(35)}, {"x-goog-api-key": "AIza" + _alnum(35)}),
        "oauth vs key": ({"authorization": "Bearer sk-ant-oat01-" + _alnum(40)}, {"x-api-key": "sk-ant-api03-" + _alnum(40)}),
    }
    facts = {}
    since = proxy.mark()
    for name, (writer, _) in cases.items():
        fact, _, secret = _fact_and_question(uuid.uuid4().hex[:8])
        facts[name] = secret
        _post(proxy, [{"role": "user", "content": fact}], session=f"w-{name}-{uuid.uuid4().hex[:6]}", headers=writer,
              tools=False)
    # the control: a user with a key of their own gets their fact back in another session
    owner = {"x-goog-api-key": "AIza" + _alnum(35)}
    fact, question, control = _fact_and_question(uuid.uuid4().hex[:8])
    _post(proxy, [{"role": "user", "content": fact}], session=f"own-{uuid.uuid4().hex[:6]}", headers=owner, tools=False)
    _wait_ingested(proxy, since, len(cases) + 1)

    for name, (_, reader) in cases.items():
        standin.reset()
        _post(proxy, [{"role": "user", "content": question}], session=f"r-{name}-{uuid.uuid4().hex[:6]}", headers=reader,
              tools=False)
        sent = standin.requests()[-1].body.decode()
        assert facts[name] not in sent, f"{name}: another user's memory was injected"
        assert not any(s in sent for s in facts.values())
    standin.reset()
    _post(proxy, [{"role": "user", "content": question}], session=f"own-{uuid.uuid4().hex[:6]}", headers=owner, tools=False)
    assert control in standin.requests()[-1].body.decode(), "the control: memory works for the same user"
    tenants = {e["data"]["tenant"] for e in proxy.events("request", since=since)}
    assert len(tenants) == 2 * len(cases) + 1  # every writer and reader apart; the owner twice the same


# --- 3. loopback -----------------------------------------------------------------------------------------
def _local_addresses() -> list[str]:
    """This machine's own non-loopback IPv4 addresses (no packet leaves it to find them)."""
    found = set()
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout
        found.update(a for a in out.split() if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", a))
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # UDP connect: picks the outgoing address, sends nothing
            found.add(s.getsockname()[0])
    except OSError:
        pass
    return sorted(a for a in found if not a.startswith("127."))


def _listening(port: int) -> list[str]:
    """Local addresses with a socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    out = []
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            addr, p = f[1].split(":")
            if int(p, 16) == port and f[3] == "0A":  # LISTEN
                out.append(addr)
    return out


class DocumentedCommand(ProxyProcess):
    """``mitmdump -s addons/contextwarden.py`` without ``--listen-host``, as the README has it."""

    def command(self) -> list[str]:
        cmd = super().command()
        i = cmd.index("--listen-host")
        return cmd[:i] + cmd[i + 2:]


# --- 4. a privacy stage before memory --------------------------------------------------------------------
def test_a_privacy_stage_before_memory_is_not_undone(proxies, standin):
    proxy = proxies["privacy"]
    address = f"dana.{uuid.uuid4().hex[:8]}@example.org"
    other = f"ops-{uuid.uuid4().hex[:6]}@corp.example.com"
    key = {"x-api-key": "sk-ant-api03-" + _alnum(40)}
    session = f"priv-{uuid.uuid4().hex[:6]}"
    since = proxy.mark()
    history = [{"role": "user", "content": f"My billing contact is {address}; the invoices go to the Lisbon office."},
               {"role": "assistant", "content": [{"type": "text", "text": "Noted."},
                                                 {"type": "tool_use", "id": "toolu_p1", "name": "Bash",
                                                  "input": {"command": "grep -r billing contacts.txt"}}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_p1",
                                             "content": f"contacts.txt: billing {address}\ncontacts.txt: ops {other}"},
                                            {"type": "text", "text": f"Also cc {other} on the Lisbon invoices."}]}]
    _post(proxy, history[:1], session=session, headers=key)
    _post(proxy, history, session=session, headers=key)
    assert address not in standin.requests()[-1].body.decode()  # the stage did its work upstream
    _wait_ingested(proxy, since, 2)
    # a later request (another session of the same user) gets memory about the invoices: no address in it
    standin.reset()
    _post(proxy, [{"role": "user", "content": "Who is the billing contact for the Lisbon invoices?"}],
          session=session + "-later", headers=key)
    later = standin.requests()[-1].body.decode()
    assert "[email]" in later and "Lisbon" in later  # memory was injected, and it holds the redacted text
    assert address not in later and other not in later
    evs = proxy.events(since=since)
    assert any(e["type"] == "redact_emails" for e in evs)
    proxy.mark()
    where = _files_blob(proxy.home)  # Chroma, the state, the event log
    where |= {"stdout": proxy.stdout_text().encode(), "stderr": proxy.stderr_text().encode()}
    assert [k for k, v in where.items() if address.encode() in v or other.encode() in v] == []
    assert any(b"Lisbon" in v for k, v in where.items() if "chroma" in k)  # the scan sees stored text
