"""The evaluations through a live proxy: the same conversations, questions and profile as in-process,
sent as real HTTP requests through ``contextwarden run`` (a real mitmdump, memory in its own process) to a
local stand-in upstream that records every body it receives (:class:`Live`).

Every replayed turn is the upstream's answer to a request holding everything said so far. Once the proxy
has completed every turn and the memory process has stored everything (ingestion settled), a question is
sent as the last user message, and its recall is read from the body the upstream received.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson

from ...core.events import Event
from ...memory import wire
from .evaluation import Asked, InProcess, body_of, eval_replayer, request_text, write_profile

LIVE_TOLERANCE = 0.01  # the target: live recall within this of the in-process eval's
_LISTENING = re.compile(r"listening at (?:\*|[\d.]+|\[[0-9a-f:]+\]):(\d+)", re.I)


class RecordingUpstream:
    """A minimal Anthropic Messages endpoint on 127.0.0.1: answers each request with ``reply`` (set by
    the driver before it sends; requests are sequential) as one JSON body, and records every body. With
    ``drop`` it records the body and closes the connection without an answer: the proxy then completes no
    turn, so memory stores nothing of that request."""

    def __init__(self) -> None:
        self.reply = ""
        self.drop = False
        self.answered = 0  # requests answered: each is a turn the proxy completes
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        up = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {}
                with up._lock:
                    up.bodies.append(body)
                    text, drop = up.reply, up.drop
                    up.answered += not drop
                if drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                out = json.dumps({
                    "id": f"msg_eval{len(up.bodies):06d}", "type": "message", "role": "assistant",
                    "model": body.get("model", "claude-eval"),
                    "content": [{"type": "text", "text": text}] if text else [],
                    "stop_reason": "end_turn", "stop_sequence": None,
                    "usage": {"input_tokens": max(1, len(raw) // 4), "output_tokens": max(1, len(text) // 4)},
                }).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="cw-eval-upstream", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class LiveProxy:
    """``contextwarden run`` in reverse mode in front of ``upstream``, on a port the OS picks."""

    def __init__(self, home: Path, profile: Path, upstream: str, startup_timeout: float = 300) -> None:
        self.home = home
        self.events_path = home / "logs" / "events.jsonl"
        home.mkdir(parents=True, exist_ok=True)
        self._events: list = []
        self._offset = 0
        cmd = [sys.executable, "-m", "contextwarden", "run", "--home", str(home), "--profile", str(profile),
               "--port", "0", "--mode", f"reverse:{upstream}", "--confdir", str(home / "mitmproxy")]
        self._out = open(home / "proxy.out", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        self.port: int | None = None
        self._wait_started(startup_timeout)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=600)

    def output(self) -> str:
        try:
            return (self.home / "proxy.out").read_text(errors="replace")
        except OSError:
            return ""

    def events(self) -> list:
        """The proxy's events so far (:class:`~contextwarden.core.events.Event`), read incrementally: the log
        grows by thousands of events per conversation and is read at every question."""
        try:
            with open(self.events_path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next read
        for line in chunk[:end].splitlines():
            try:
                self._events.append(Event.from_dict(orjson.loads(line)))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
        self._offset += end
        return self._events

    def _wait_started(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the proxy exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            if self.port is None:
                m = _LISTENING.search(self.output())
                if m:
                    self.port = int(m.group(1))
            if self.port is not None and any(e.type == "memory_status" and e.data.get("status")
                                             for e in self.events()):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the proxy did not start in {timeout:.0f} s:\n{self.output()[-3000:]}")

    def post(self, body: dict[str, Any], api_key: str, session: str) -> httpx.Response:
        return self.client.post("/v1/messages", json=body, headers={
            "x-api-key": api_key, "anthropic-version": "2023-06-01", "x-contextwarden-session": session})

    # --- ingestion settled ---------------------------------------------------------------------------
    def _memory_call(self, name: str, *args, wait: float = 600) -> Any:
        """``name(*args)`` on the memory service in the memory process, over its socket."""
        socks = sorted((self.home / "run").glob("memory-*.sock"))
        if not socks:
            raise RuntimeError("no memory process socket under cw_home/run")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(wait)
            s.connect(str(socks[-1]))
            wire.send_frame(s, {"id": 1, "op": "call", "m": name, "a": wire.encode(list(args)), "k": wire.encode({})})
            while True:
                msg = wire.recv_frame(s)
                if msg is None:
                    raise RuntimeError("the memory process closed the socket")
                if msg.get("id") == 1:
                    if "e" in msg:
                        raise wire.decode_error(msg["e"])
                    return wire.decode(msg["r"])

    def settle(self, turns: int, timeout: float = 1800) -> None:
        """Wait until the proxy completed ``turns`` turns (each hands its items to the memory process
        before its ``turn`` event) and the memory process stored everything it was handed."""
        deadline = time.monotonic() + timeout
        while sum(e.type == "turn" for e in self.events()) < turns:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the proxy completed fewer than {turns} turns:\n{self.output()[-2000:]}")
            time.sleep(0.05)
        self._memory_call("wait_ready", 600)
        time.sleep(0.2)  # the last submit frames reach the memory process's pool
        if not self._memory_call("flush", max(1.0, deadline - time.monotonic())):
            raise RuntimeError("memory ingestion did not settle in time")

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            self._out.close()


@contextmanager
def live_proxy(home: str | Path | None, memory: dict[str, Any], compaction: dict[str, Any],
               profile_extra: str = "", window: int = 4096,
               name: str = "locomo") -> Iterator[tuple[LiveProxy, RecordingUpstream]]:
    """The recording upstream and a live proxy on an eval's profile (the in-process eval's settings)."""
    with tempfile.TemporaryDirectory(prefix=f"cw-eval-live-{name}-") as tmp:
        base = Path(home) if home else Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        # one event log for the whole run (the driver counts its turn events; rotation would hide some)
        extra = "log: {events_max_mb: 100000}\n" + profile_extra
        profile = write_profile(base / f"eval-{name}.yaml", window, memory, compaction, extra)
        upstream = RecordingUpstream()
        try:
            proxy = LiveProxy(base / "home", profile, upstream.url)
            try:
                yield proxy, upstream
            finally:
                proxy.close()
        finally:
            upstream.close()


def _memory_event(proxy: LiveProxy, since: int, session: str) -> dict:
    """The ``memory`` event of the last request sent after event ``since`` (the stage's report)."""
    for e in reversed(proxy.events()[since:]):
        d = e.data
        if e.type == "memory" and ("injected" in d or "skipped" in d) and "ingested" not in d \
                and e.session in (session, None):
            return d
    return {}


def _forward_tokens(proxy: LiveProxy, since: int) -> tuple[int, int]:
    """(tokens sent upstream, tokens of the client's request) of the last ``forward`` after event ``since``."""
    for e in reversed(proxy.events()[since:]):
        if e.type == "forward":
            d = e.data
            tin = int(d.get("tokens_in") or 0)
            return (int(d.get("tokens_out") or tin) if d.get("changed") else tin), tin
    return 0, 0


class Live:
    """A live proxy and its recording upstream as the client an evaluation drives (as :class:`InProcess`).

    As in-process, a question is asked against the conversation's memory alone: the upstream does not
    answer it (the proxy completes no turn and stores nothing of it). Answered (``remember_questions``),
    each question is stored, and the later questions find the earlier ones: what a person asking them in
    a row would get."""

    def __init__(self, proxy: LiveProxy, upstream: RecordingUpstream, remember_questions: bool = False) -> None:
        self.proxy, self.upstream, self.remember = proxy, upstream, remember_questions

    def turn(self, messages: list[dict[str, Any]], reply: str, key: str, session: str) -> bool:
        """Send ``messages`` and answer with ``reply``; True when the proxy did not answer 200."""
        self.upstream.reply, self.upstream.drop = reply, False
        return self.proxy.post(body_of(messages), key, session).status_code != 200

    def ask(self, messages: list[dict[str, Any]], key: str, session: str) -> Asked:
        self.proxy.settle(self.upstream.answered)
        self.upstream.reply, self.upstream.drop = "", not self.remember
        mark, before = len(self.proxy.events()), len(self.upstream.bodies)
        r = self.proxy.post(body_of(messages), key, session)
        body = self.upstream.bodies[before] if len(self.upstream.bodies) > before else {}
        tokens, full = _forward_tokens(self.proxy, mark)
        return Asked(request_text(body), _memory_event(self.proxy, mark, session), tokens, full,
                     failed=self.remember and r.status_code != 200)

    def dropped(self) -> int:
        return sum(int(e.data.get("dropped") or 0) for e in self.proxy.events() if e.type == "memory")


@contextmanager
def client(name: str, home: str | Path | None, window: int, memory: dict[str, Any], compaction: dict[str, Any],
           profile_extra: str = "", embed_cache: str | Path | None = None, live: bool = False,
           remember_questions: bool = False) -> Iterator[InProcess | Live]:
    """The client an evaluation drives: the pipeline in-process, or (``live``) a live proxy in front of
    the recording upstream, on the evaluation's profile; the embedding cache attached either way (the
    live proxy's memory process reads and fills the same file: results are the same)."""
    if not live:
        with eval_replayer(name, home, window, memory, compaction, profile_extra, embed_cache) as rp:
            yield InProcess(rp)
        return
    memory = {**memory, "embed_cache": str(embed_cache)} if embed_cache else memory
    with live_proxy(home, memory, compaction, profile_extra, window, name) as (proxy, upstream):
        yield Live(proxy, upstream, remember_questions)
