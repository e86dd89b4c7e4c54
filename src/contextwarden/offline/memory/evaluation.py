"""What the LoCoMo and LongMemEval replays share: the client they drive (the pipeline in-process,
:class:`InProcess`, or a live proxy, :class:`Live`), the outgoing text, the baselines, profiles and tables.

A turn counts as *recalled* when its text (whitespace-normalised) is part of the text of the request that
goes upstream when the question is asked: in the kept history, a compaction summary, or injected memory.
The check reads only the outgoing body; the pipeline never sees evidence ids.

Live (:class:`Live`): the same conversations, questions and profile sent as real HTTP requests through
``contextwarden run`` (a real mitmdump, memory in its own process) to a local stand-in upstream that
records every body it receives. Once the proxy has completed every turn and the memory process has
stored everything (ingestion settled), a question is sent as the last user message, and its recall is
read from the body the upstream received.
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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from ...core.events import Event
from ...memory import wire
from ...memory.retrieve import normalise  # noqa: F401 (the evaluations' normalise: retrieval's own)
from ...models.base import ApiKind
from ..assets import TOKENIZER_WAIT_S
from .replay import Replayer, Sent


def _content_texts(content: Any) -> Iterable[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for b in content:
            if isinstance(b, str):
                yield b
            elif isinstance(b, dict):
                if isinstance(b.get("text"), str):
                    yield b["text"]
                if "content" in b:
                    yield from _content_texts(b["content"])
                if isinstance(b.get("output"), str):
                    yield b["output"]


def request_text(wire: dict[str, Any]) -> str:
    """All the text of a request body (system, messages, tool results), normalised."""
    parts = [t for key in ("system", "instructions") for t in _content_texts(wire.get(key))]
    msgs = wire.get("messages") if "messages" in wire else wire.get("input")
    if isinstance(msgs, str):
        parts.append(msgs)
    for m in msgs or []:
        if isinstance(m, dict):
            parts.extend(_content_texts(m.get("content")))
            if isinstance(m.get("output"), str):
                parts.append(m["output"])
        elif isinstance(m, str):
            parts.append(m)
    return normalise("\n".join(parts))


def contains(haystack: str, text: str, share: float = 1.0) -> bool:
    """Whether ``text`` reaches ``haystack`` (a :func:`request_text`): whole (whitespace-normalised), or
    ``share`` of its lines of 16+ characters, by length (memory quotes every line with ``| `` and stores a
    text over ``memory.chunk_tokens`` word pieces in chunks)."""
    t = normalise(text)
    if not t:
        return False
    if t in haystack:
        return True
    lines = [x for x in (normalise(line) for line in text.splitlines()) if len(x) >= 16]
    return bool(lines) and sum(len(x) for x in lines if x in haystack) >= share * sum(len(x) for x in lines)


def truncate_to(runtime, api: ApiKind, messages: list[dict], budget: int, model: str | None = None) -> tuple[list[dict], int]:
    """Keep-the-last-N baseline: the longest suffix of ``messages`` whose request fits ``budget`` tokens
    (the last message is always kept). Returns (messages, tokens)."""
    tokens = runtime.tokens
    used = tokens.count_request(api, {"messages": []}, model)
    kept = 0
    for m in reversed(messages):
        c = tokens.count_message(api, m, model)
        if kept and used + c > budget:
            break
        used += c
        kept += 1
    return messages[len(messages) - kept:], used


def write_profile(path: Path, window: int, memory: dict[str, Any], compaction: dict[str, Any] | None = None,
                  log: dict[str, Any] | None = None) -> Path:
    """An evaluation profile: Claude Code's, with the window and memory settings under test, and stage
    budgets generous enough that the machine's load cannot turn a slow stage into a full-history pass;
    ``log``: more of the log section."""
    data: dict[str, Any] = {
        "extends": "claude-code", "name": "eval",
        "tokens": {"context_window": window, "calibrate": False, "load_timeout_s": TOKENIZER_WAIT_S},
        "clearing": {"trigger_tokens": window // 2, "clear_at_least": window // 8},
        "compaction": dict(compaction or {}),
        "memory": dict(memory),
        "pipeline": {"stage_budget_ms": 120000},
        "log": {"record_bodies": False, **(log or {})},
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    """A plain text table (numbers right-aligned)."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        if isinstance(v, int):
            return f"{v:,}"
        return "" if v is None else str(v)

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    return "\n".join([title, line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in cells])


def load(path: str | Path | list) -> list[dict[str, Any]]:
    """The items of a benchmark's JSON file (or ``path`` itself when it is a list of them already)."""
    return path if isinstance(path, list) else json.loads(Path(path).read_text())


def mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def body_of(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The request body a replayed turn sends (as :meth:`Replayer.body` builds it)."""
    return {"model": "claude-eval", "max_tokens": 1024, "messages": messages}


@dataclass
class Asked:
    """What reached the upstream when a question was asked: its text (normalised), the memory stage's
    report, tokens sent and the client's request's tokens, the truncation baseline at the same tokens
    (in-process only), and whether the request failed (a stage failure in-process, not answered live)."""

    text: str
    memory: dict[str, Any] = field(default_factory=dict)
    tokens: int = 0
    full_tokens: int = 0
    trunc_text: str = ""
    trunc_tokens: int = 0
    failed: bool = False


def costs(got: Asked) -> dict[str, Any]:
    """A question's tokens and memory's part of them, as both benchmarks record them."""
    m = got.memory
    return dict(tokens=got.tokens, trunc_tokens=got.trunc_tokens, full_tokens=got.full_tokens,
                injected=int(m.get("injected") or 0), memory_tokens=int(m.get("tokens") or 0),
                reason=str(m.get("skipped") or ""))


@dataclass
class Run:
    """What both benchmarks' reports hold besides their questions' own fields."""

    questions: list = field(default_factory=list)
    turns: int = 0
    requests: int = 0
    fallbacks: int = 0  # requests sent as the decided state or unchanged (a stage failed...; live: not answered 200)
    seconds: float = 0.0
    dropped: int = 0  # items the ingestion queue dropped (the replay outran the embedder)
    settings: dict[str, Any] = field(default_factory=dict)

    def memory_line(self) -> str:
        qs = self.questions
        return (f"contextwarden: {mean(q.injected for q in qs):.1f} items / {mean(q.memory_tokens for q in qs):.0f} "
                f"tokens of memory per question; {self.requests:,} requests replayed, {self.fallbacks} forwarded "
                f"unchanged after a stage failure, {self.dropped} items dropped by a full ingestion queue")

    def live_line(self, lower: int, higher: int, what: str, same: bool) -> str:
        """The tail of a side-by-side: how many questions live recalled less / more ``what``."""
        return (f"  questions where live recalled {what}: {lower} / {higher}{'' if same else ' (question lists differ!)'}; "
                f"live: {self.requests:,} requests, {self.fallbacks} not answered 200, {self.dropped} items dropped, "
                f"{self.seconds:.0f} s")


def pick(items: list[dict[str, Any]], limit: int | None, ids: Iterable[str] | None, key: str) -> list[dict[str, Any]]:
    """The items whose ``key`` is one of ``ids`` (all when None), the first ``limit`` of them."""
    if ids:
        wanted = set(ids)
        items = [x for x in items if str(x.get(key)) in wanted]
    return items[:limit] if limit else items


def _failed(sent: Sent) -> bool:
    """A stage failed, or the pipeline sent the decided state (an invalid rewrite, one above the window)."""
    return sent.outcome.fallback is not None or sent.outcome.reason.startswith(("stage", "invalid"))


class InProcess:
    """The real pipeline in this process (:class:`Replayer`) as the client an evaluation drives."""

    def __init__(self, rp: Replayer) -> None:
        self.rp = rp

    def turn(self, messages: list[dict[str, Any]], reply: str, key: str, session: str) -> bool:
        """Send ``messages``, complete the turn with ``reply``; True when a stage failed on it."""
        sent = self.rp.send(messages, api_key=key, session=session)
        self.rp.complete(sent, reply)
        return _failed(sent)

    def ask(self, messages: list[dict[str, Any]], key: str, session: str) -> Asked:
        """Send a question once ingestion settled; nothing of it is stored."""
        if not self.rp.flush():
            raise RuntimeError("memory ingestion did not finish within the flush timeout")
        sent = self.rp.send(messages, api_key=key, session=session)
        tokens = sent.tokens()
        kept, ttoks = truncate_to(self.rp.runtime, self.rp.api, messages, tokens, sent.ctx.model)
        return Asked(request_text(sent.wire), sent.ctx.notes.get("memory") or {}, tokens, sent.ctx.tokens_in or 0,
                     request_text({"messages": kept}), ttoks, _failed(sent))

    def dropped(self) -> int:
        return self.rp.dropped()


EVAL_EPOCH = 1_700_000_000.0  # the in-process evaluations' clock starts here (:class:`Replayer`)


@contextmanager
def eval_home(name: str, home: str | Path | None, window: int, memory: dict[str, Any], compaction: dict[str, Any],
              log: dict[str, Any] | None = None) -> Iterator[tuple[Path, Path]]:
    """A run's folder (``home``, or a temporary one removed on exit) and its evaluation profile."""
    with tempfile.TemporaryDirectory(prefix=f"cw-eval-{name}-") as tmp:
        base = Path(home) if home else Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        yield base, write_profile(base / f"eval-{name}.yaml", window, memory, compaction, log)


@contextmanager
def eval_replayer(name: str, home: str | Path | None, window: int, memory: dict[str, Any],
                  compaction: dict[str, Any], embed_cache: str | Path | None = None) -> Iterator[Replayer]:
    """A :class:`Replayer` on an evaluation profile (:func:`eval_home`), with the embedding disk cache
    attached, on a clock of its own (its figures do not depend on the machine's speed); closed on exit."""
    with eval_home(name, home, window, memory, compaction) as (base, profile):
        rp = Replayer.from_profile(profile, base / "home", clock=EVAL_EPOCH)
        try:
            svc = rp.memory()
            if svc is not None and embed_cache and svc.embedder is not None:
                svc.embedder.attach_disk(embed_cache)
            yield rp
        finally:
            rp.close()


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
        """``name(*args)`` on the memory service in the memory process, over the socket its ``memory_status``
        event names."""
        socks = [e.data["socket"] for e in self.events() if e.type == "memory_status" and e.data.get("socket")]
        if not socks:
            raise RuntimeError("no memory_status event names the memory process's socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(wait)
            s.connect(str(socks[-1]))
            wire.send_frame(s, {"id": 1, "op": "call", "m": name, "a": args})
            while True:
                msg = wire.recv_frame(s)
                if msg is None:
                    raise RuntimeError("the memory process closed the socket")
                if msg.get("id") == 1:
                    if "e" in msg:
                        raise wire.decode_error(msg["e"])
                    return msg["r"]

    def wait_for(self, type_: str, count: int = 1, since: int = 0, timeout: float = 60) -> None:
        """Wait until ``count`` events of ``type_`` follow event ``since`` (the proxy answers before its
        writer thread has appended the request's events to the log)."""
        deadline = time.monotonic() + timeout
        while sum(e.type == type_ for e in self.events()[since:]) < count:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"fewer than {count} {type_} events in {timeout:.0f} s:\n{self.output()[-2000:]}")
            time.sleep(0.02)

    def settle(self, turns: int, timeout: float = 1800) -> None:
        """Wait until the proxy completed ``turns`` turns (each hands its items to the memory process
        before its ``turn`` event) and the memory process stored everything it was handed."""
        deadline = time.monotonic() + timeout
        self.wait_for("turn", turns, timeout=timeout)
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
def live_proxy(home: str | Path | None, memory: dict[str, Any], compaction: dict[str, Any], window: int = 4096,
               name: str = "locomo") -> Iterator[tuple[LiveProxy, RecordingUpstream]]:
    """The recording upstream and a live proxy on an eval's profile (the in-process eval's settings)."""
    # one event log for the whole run (the driver counts its turn events; rotation would hide some)
    with eval_home(f"live-{name}", home, window, memory, compaction, {"events_max_mb": 100000}) as (base, profile):
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
    answer it (the proxy completes no turn and stores nothing of it)."""

    def __init__(self, proxy: LiveProxy, upstream: RecordingUpstream) -> None:
        self.proxy, self.upstream = proxy, upstream

    def turn(self, messages: list[dict[str, Any]], reply: str, key: str, session: str) -> bool:
        """Send ``messages`` and answer with ``reply``; True when the proxy did not answer 200."""
        self.upstream.reply, self.upstream.drop = reply, False
        return self.proxy.post(body_of(messages), key, session).status_code != 200

    def ask(self, messages: list[dict[str, Any]], key: str, session: str) -> Asked:
        self.proxy.settle(self.upstream.answered)
        self.upstream.reply, self.upstream.drop = "", True
        mark, before = len(self.proxy.events()), len(self.upstream.bodies)
        self.proxy.post(body_of(messages), key, session)
        body = self.upstream.bodies[before] if len(self.upstream.bodies) > before else {}
        self.proxy.wait_for("forward", since=mark)  # the memory stage's event comes before it
        tokens, full = _forward_tokens(self.proxy, mark)
        return Asked(request_text(body), _memory_event(self.proxy, mark, session), tokens, full)

    def dropped(self) -> int:
        return sum(int(e.data.get("dropped") or 0) for e in self.proxy.events() if e.type == "memory")


@contextmanager
def client(name: str, home: str | Path | None, window: int, memory: dict[str, Any], compaction: dict[str, Any],
           embed_cache: str | Path | None = None, live: bool = False) -> Iterator[InProcess | Live]:
    """The client an evaluation drives: the pipeline in-process, or (``live``) a live proxy in front of
    the recording upstream, on the evaluation's profile; the embedding cache attached either way (the
    live proxy's memory process reads and fills the same file: results are the same)."""
    if not live:
        with eval_replayer(name, home, window, memory, compaction, embed_cache) as rp:
            yield InProcess(rp)
        return
    memory = {**memory, "embed_cache": str(embed_cache)} if embed_cache else memory
    with live_proxy(home, memory, compaction, window, name) as (proxy, upstream):
        yield Live(proxy, upstream)
