"""``contextwarden demo``: the proxy against a local stand-in, with a scripted session, in one command.

Its two ends: a local stand-in for Anthropic's Messages API and a scripted coding session that sends its
requests through the proxy. The session reads one generated source file per turn (a tool call and its
~1.5K-token result), so with the ``demo`` profile's small window the history crosses clearing's trigger
after a few turns and compaction's thresholds after a few more. Its last question is about the first
file, whose result was cleared long before: the stand-in's answer names that file's path, and recall
puts the original back into the next request. Nothing leaves the machine: no key, no provider.
"""

from __future__ import annotations

import http.client
import http.server
import itertools
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..memory.inject import strip_blocks
from ..tui.app import ContextWardenApp
from ..tui.client import LiveClient
from ._common import cli_name, home_of

START_S = 300  # the proxy's first start: imports, tokenizers, the memory process
MODEL = "claude-sonnet-4-6"


def path_of(k: int) -> str:
    return f"src/demo/module_{k:02d}.py"


def source_of(k: int) -> str:
    """A file of ~1.5K tokens whose names are its own (what recall can find again)."""
    lines = [f'"""module {k:02d}: totals and ledgers of region {k}."""', ""]
    for j in range(24):
        lines += [f"def compute_total_{k:02d}_{j:02d}(ledger_{k}_{j}, rate=0.{k}{j}):",
                  f"    # region {k}, ledger {j}: sums the open items and applies rate 0.{k}{j}",
                  f"    return sum(item.amount_{j} for item in ledger_{k}_{j}.items) * (1 + rate)", ""]
    return "\n".join(lines)


def _last(messages: list[dict]) -> tuple[str, Any]:
    """The last user message's tool result, or the person's own words in it (a memory block the proxy put
    there left out; a message of another role after it, as Claude Code's list of agents, passed over)."""
    content = next((m.get("content") for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None)
    blocks = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
    kinds = {b.get("type") for b in blocks if isinstance(b, dict)}
    if "tool_result" in kinds:
        return "tool_result", next(b for b in blocks if b.get("type") == "tool_result")
    return "text", strip_blocks(" ".join(str(b.get("text", "")) for b in blocks if isinstance(b, dict)))


def answer(body: dict, n: int) -> dict:
    """Anthropic's JSON answer: read the file the user names, then say what it holds; asked about an
    earlier file, name it (the reference recall follows)."""
    kind, last = _last(body.get("messages") or [])
    if kind == "text" and (named := re.search(r"\bmodule (\d+)\b", last)):
        content = [{"type": "tool_use", "id": f"toolu_demo_{n:04d}", "name": "Read", "input": {"file_path": path_of(int(named[1]))}}]
    elif kind == "text":
        content = [{"type": "text", "text": f"The totals of region 1 are computed in {path_of(1)} "
                                            "(compute_total_01_00 and the functions after it)."}]
    else:
        content = [{"type": "text", "text": "Read it: the module sums each ledger's open items and applies its rate."}]
    stop = "tool_use" if content[0]["type"] == "tool_use" else "end_turn"
    size = len(orjson.dumps(body))
    return {"id": f"msg_demo_{n:04d}", "type": "message", "role": "assistant", "model": body.get("model", MODEL),
            "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": size // 4, "output_tokens": 40, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0}}


def streamed(msg: dict) -> bytes:
    """``msg`` as Anthropic's event stream (a request with ``stream: true``, as Claude Code sends)."""
    def event(kind: str, data: dict) -> bytes:
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"

    out = [event("message_start", {"message": {**msg, "content": [], "stop_reason": None,
                                                "usage": {**msg["usage"], "output_tokens": 0}}})]
    for i, b in enumerate(msg["content"]):
        start, delta = (({**b, "text": ""}, {"type": "text_delta", "text": b["text"]}) if b["type"] == "text" else
                        ({**b, "input": {}}, {"type": "input_json_delta", "partial_json": orjson.dumps(b["input"]).decode()}))
        out += [event("content_block_start", {"index": i, "content_block": start}),
                event("content_block_delta", {"index": i, "delta": delta}), event("content_block_stop", {"index": i})]
    out += [event("message_delta", {"delta": {"stop_reason": msg["stop_reason"], "stop_sequence": None},
                                    "usage": {"output_tokens": msg["usage"]["output_tokens"]}}),
            event("message_stop", {})]
    return b"".join(out)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format, *args) -> None:  # noqa: A002 - quiet: the demo prints its own lines
        pass

    def do_POST(self) -> None:  # noqa: N802
        body: Any = {}
        try:
            body = orjson.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
            if self.path.split("?")[0] != "/v1/messages":
                status, out = 404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}}
            else:
                status, out = 200, answer(body, next(self.server.count))
        except Exception as e:  # noqa: BLE001 - a request it cannot read: the API's error, not a dropped connection
            status, out = 400, {"type": "error", "error": {"type": "invalid_request_error", "message": f"demo stand-in: {e!r}"}}
        stream = status == 200 and isinstance(body, dict) and body.get("stream") is True
        data = streamed(out) if stream else orjson.dumps(out)
        self.send_response(status)
        self.send_header("content-type", "text/event-stream" if stream else "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    count: Any = None


@contextmanager
def stand_in() -> Iterator[str]:
    """The stand-in upstream on 127.0.0.1 (a port the OS picks), in a thread of this process: its URL."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.count = itertools.count(1)
    threading.Thread(target=server.serve_forever, name="cw-demo-upstream", daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Step:
    turn: int
    status: int
    overhead_ms: str | None


def session(proxy_port: int, turns: int, on_step: Callable[[Step], Any]) -> list[Step]:
    """The scripted session through the proxy (reverse mode: the proxy is the base URL)."""
    messages: list[dict] = []
    steps: list[Step] = []
    conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=120)

    def send(turn: int, content: Any) -> dict:
        messages.append({"role": "user", "content": content})
        body = orjson.dumps({"model": MODEL, "max_tokens": 512, "messages": messages,
                             "metadata": {"user_id": "contextwarden-demo"}})
        conn.request("POST", "/v1/messages", body, {"content-type": "application/json", "x-api-key": "demo-key",
                                                    "anthropic-version": "2023-06-01"})
        resp = conn.getresponse()
        out = orjson.loads(resp.read())
        steps.append(Step(turn, resp.status, resp.getheader("x-contextwarden-overhead-ms")))
        on_step(steps[-1])
        if resp.status != 200:
            raise RuntimeError(f"the proxy answered {resp.status}: {out}")
        messages.append({"role": "assistant", "content": out["content"]})
        return out

    try:
        for k in range(1, turns + 1):
            out = send(k, f"Read module {k:02d} and tell me what it does.")
            use = next(b for b in out["content"] if b["type"] == "tool_use")
            send(k, [{"type": "tool_result", "tool_use_id": use["id"], "content": source_of(k)}])
        send(turns + 1, "Which file computed the totals of region 1?")
        send(turns + 2, "Thanks. Quote its first function.")  # the request recall puts the cleared file back into
    finally:
        conn.close()
    return steps


def register(sub) -> None:
    p = sub.add_parser("demo", description="Starts a local stand-in for Anthropic's API and the proxy (profile demo: a 16K "
                                           "window) in reverse mode in front of it, sends a scripted coding session through "
                                           "it (clearing, compaction, recall), prints what happened, then opens the TUI on "
                                           "it (--no-tui: print and stop). No key, no provider, nothing leaves the machine.")
    p.add_argument("--home", default=None, help="data directory (default: a new temporary one)")
    p.add_argument("--port", type=int, default=0, help="the proxy's port (default: a free one)")
    p.add_argument("--turns", type=int, default=10, help="files the session reads (two requests each)")
    p.add_argument("--no-tui", action="store_true", help="print the summary and stop (no terminal UI)")
    p.set_defaults(func=run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _events(home: Path) -> list[dict]:
    path = home / "logs" / "events.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()] if path.exists() else []


def summary(events: list[dict]) -> list[str]:
    """What the session's requests went through, read off the proxy's own events."""
    kinds = Counter(e["type"] for e in events)
    fwd = [e["data"] for e in events if e["type"] == "forward"]
    tin = sum(d.get("tokens_in") or 0 for d in fwd)
    tout = sum(d.get("tokens_out") or 0 for d in fwd)
    clearing = [e["data"].get("cleared") or 0 for e in events if e["type"] == "clearing"]
    steps = sum(b > a for a, b in zip([0] + clearing, clearing))  # each event counts the session's cleared so far
    compacted = [e["data"] for e in events if e["type"] == "compaction" and e["data"].get("reused") is False]
    recalled = [e["data"] for e in events if e["type"] == "recall" and (e["data"].get("injected") or e["data"].get("kept"))]
    return [f"  requests {len(fwd)}, rewritten {sum(bool(d.get('changed')) for d in fwd)}; tokens as the client sent "
            f"them {tin:,}, sent upstream {tout:,} ({(tout / tin - 1) * 100 if tin else 0:+.1f}%)",
            f"  clearing: {steps} steps, {max(clearing, default=0)} tool results replaced by stubs naming their memory ids",
            f"  compaction: {len(compacted)} new summaries"
            + (f" ({compacted[0].get('tokens_before', 0):,} -> {compacted[0].get('tokens_after', 0):,} tokens)" if compacted else ""),
            f"  recall: {len(recalled)} requests got cleared or compacted content back",
            f"  errors: {kinds['error']}"]


def run(args) -> int:
    home = home_of(args) if args.home else Path(tempfile.mkdtemp(prefix="contextwarden-demo-"))
    port = args.port or _free_port()
    with stand_in() as upstream:
        cmd = [sys.executable, "-m", "contextwarden", "run", "--home", str(home), "--port", str(port),
               "--profile", "demo", "--mode", f"reverse:{upstream}"]
        print(f"contextwarden demo: stand-in upstream on {upstream}; proxy on 127.0.0.1:{port}; data in {home}")
        print(f"  the proxy: {' '.join(cmd[2:])}   (its log: {home / 'proxy.log'})")
        home.mkdir(parents=True, exist_ok=True)
        with open(home / "proxy.log", "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + START_S
            while not (home / "tui.json").exists():  # written once the proxy listens
                if proc.poll() is not None or time.monotonic() > deadline:
                    print((home / "proxy.log").read_text()[-3000:], file=sys.stderr)
                    print("contextwarden demo: the proxy did not start (its log above)", file=sys.stderr)
                    return 1
                time.sleep(0.1)
            print(f"  sending a scripted session: {args.turns} files read, then a question about the first")
            steps = session(port, args.turns, on_step=lambda s: print(
                f"    turn {s.turn:>2}: {s.status}, proxy overhead {s.overhead_ms} ms", flush=True))
            deadline = time.monotonic() + 30
            while sum(e["type"] == "turn" for e in _events(home)) < len(steps) and time.monotonic() < deadline:
                time.sleep(0.1)  # the last answers' events reach the log
            print("contextwarden demo: what the proxy did")
            print("\n".join(summary(_events(home))))
            if args.no_tui or not sys.stdout.isatty():
                print(f"  the TUI on it: {cli_name()} demo (without --no-tui); on your own proxy: {cli_name()} tui")
                return 0
            print("  opening the TUI (q quits; the proxy stops with it)")
            ContextWardenApp(LiveClient(home)).run()
            return 0
        finally:
            proc.send_signal(2)  # as Ctrl-C: the proxy shuts down its engine and memory
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
