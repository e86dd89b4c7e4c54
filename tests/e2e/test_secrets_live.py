"""Issue 37, finding 2, through a real mitmdump with every stage and memory on and the strict stand-in
upstream: the catalogue's secrets (tests/contextwarden/util/test_redact_catalogue.py), sent in user messages and tool
results over several turns, and the issue's three examples through the Anthropic SDK, are found 0 times
anywhere under the data directory (every file, SQLite and Chroma's included, searched as bytes; the
lexical snapshot's members unpacked), in mitmdump's output, in the TUI's event stream (events, the
inspector's bodies, the session's export) and in a ``contextwarden memory export``.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import httpx2
import pytest

from tests.contextwarden.util.test_redact_catalogue import Shape, _b64_lines, _pieces, catalogue
from tests.support.proxy import ProxyProcess
from tests.support.sdk import anthropic

from .test_security import ALL_STAGES, READY, TuiTap, _files_blob, _post, _wait_ingested

CONTEXTWARDEN = Path(sys.executable).with_name("contextwarden")
ISSUE = [  # the issue's three examples, verbatim
    Shape("issue_wifi", "the wifi password is TangoPIeJDt5cQ29", ("TangoPIeJDt5cQ29",)),
    Shape("issue_admin_pw", "ADMIN_PW=hunter2xyz99", ("hunter2xyz99",)),
]


def _key_tail() -> Shape:
    """``tail -6 key`` of a fresh key: base64 lines and the END line, no BEGIN."""
    lines = _b64_lines(5)
    return Shape("issue_key_tail", "$ tail -6 key\n" + "\n".join(lines) + "\n-----END PRIVATE KEY-----", tuple(lines))


def _occurrences(shapes: list[Shape], where: dict[str, bytes]) -> dict[str, list[str]]:
    out = {}
    for shape in shapes:
        pieces = [p.encode() for v in shape.values for p in _pieces(v)]
        found = [name for name, blob in where.items() if any(p in blob for p in pieces)]
        if found:
            out[shape.name] = found
    return out


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, standin):
    d = tmp_path_factory.mktemp("secrets-live")
    (d / "all.yaml").write_text(ALL_STAGES + "log: {record_bodies: true}\n")  # the bodies on disk too
    p = ProxyProcess(d / "all", name="all", profile=d / "all.yaml", reverse=standin.url, ready_events=READY)
    p.start()
    try:
        yield p
    finally:
        p.stop()


def test_no_catalogued_secret_anywhere_after_a_live_session(proxy, standin, tmp_path):
    standin.strict = True  # requests checked like the real API: a rewrite that breaks one fails here
    tail = _key_tail()
    shapes = catalogue() + ISSUE + [tail]
    canary = "quokkacanary" + uuid.uuid4().hex[:8]
    session = f"cat-{uuid.uuid4().hex[:8]}"
    key = "sk-ant-api03-" + uuid.uuid4().hex + "AA"
    tap = TuiTap(proxy.home)
    since = proxy.mark()

    # a secret only its field's name tells: a tool call's input (request bodies, events, memory)
    field = Shape("tool_input_field", "", ("fld" + uuid.uuid4().hex[:14] + "Q7",))
    shapes.append(field)
    # half the shapes in user messages, half in tool results, a few per turn, over several turns
    rounds = 8
    history: list[dict] = [{"role": "user", "content": f"{canary} round 0: {shapes[0].text}"}]
    _post(proxy, history, session=session, headers={"x-api-key": key})
    for r in range(rounds):
        mine = [s for s in shapes[1 + r::rounds] if s.text]
        said, results = mine[::2], mine[1::2]
        history.append({"role": "assistant", "content": [
            {"type": "text", "text": f"Looking at round {r}."},
            {"type": "tool_use", "id": f"toolu_{r:04d}", "name": "Bash",
             "input": {"command": f"cat notes-{r}.txt", **({"db_password": field.values[0]} if r == 0 else {})}}]})
        output = "\n".join(s.text for s in results) + "\n" + "\n".join(f"line {i} of notes {r}" for i in range(30))
        history.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_{r:04d}", "content": output},
            {"type": "text", "text": f"{canary} round {r + 1}:\n" + "\n".join(s.text for s in said)}]})
        _post(proxy, history, session=session, headers={"x-api-key": key}, stream=r % 2 == 1)

    # the issue's examples through the Anthropic SDK, in a session of their own
    sdk_session = session + "-sdk"
    client = anthropic.Anthropic(api_key=key, base_url=proxy.url, max_retries=0,
                                 default_headers={"X-Contextwarden-Session": sdk_session},
                                 http_client=httpx2.Client(trust_env=False, timeout=60))
    msgs: list[dict] = []
    for shape in ISSUE + [tail]:
        msgs.append({"role": "user", "content": f"{canary} note this: {shape.text}"})
        answer = client.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=msgs)
        msgs.append({"role": "assistant", "content": answer.content[0].text})
    _wait_ingested(proxy, since, rounds + 1 + 3)
    # a new session of the same user: memory brings the (redacted) past back into the request
    _post(proxy, [{"role": "user", "content": f"{canary}: what was the wifi password and the admin pw?"}],
          session=session + "-b", headers={"x-api-key": key})
    _wait_ingested(proxy, since, rounds + 1 + 3 + 1, quiet=0.5)

    evs = proxy.events(since=since)
    assert any(e["type"] == "clearing" and e["data"].get("cleared") for e in evs), "nothing was cleared"
    assert any(e["type"] == "compaction" and e["data"].get("summary_tokens") for e in evs), "nothing was compacted"
    assert any(e["type"] == "memory" and e["data"].get("injected") for e in evs), "nothing was injected"
    assert not [r for r in standin.requests() if (r.status or 200) >= 400], "the strict stand-in refused a request"
    assert "REDACTED" in standin.requests()[-1].body.decode()  # what memory brought back was redacted
    flows = [e["flow_id"] for e in evs if e["type"] == "request" and e["session"] in (session, sdk_session)]
    assert all("original" in tap.command(cmd="bodies", flow_id=f).get("result", {}) for f in flows[-3:])
    for s in (session, sdk_session):
        assert tap.command(cmd="export", session=s).get("result", {}).get("requests")
    tui = tap.blob()  # (everything up to the export's reply)
    tap.close()
    proxy.stop()  # the log flushed, Chroma closed, the lexical snapshot written

    export = tmp_path / "memory.jsonl"
    subprocess.run([str(CONTEXTWARDEN), "memory", "export", "--home", str(proxy.home), str(export)], check=True,
                   capture_output=True, timeout=120)
    where = _files_blob(proxy.home)
    assert any(name.endswith(".npz") for name in where) and any(n.endswith(".sqlite3") and "chroma" in n for n in where)
    assert any("bodies" in n for n in where) and any(n.endswith(".jsonl") for n in where)
    where |= {"stdout": proxy.stdout_text().encode(), "stderr": proxy.stderr_text().encode(), "tui stream": tui,
              "memory export": export.read_bytes()}
    # the scan sees what was said: the canary is in each place a secret could be
    for place in ("tui stream", "memory export"):
        assert canary.encode() in where[place], place
    for kind in ("chroma", "bodies", ".npz"):
        assert any(canary.encode() in blob for name, blob in where.items() if kind in name), kind
    assert len(shapes) >= 40
    assert _occurrences(shapes, where) == {}
