"""Load: N concurrent streaming tool-loop sessions for T seconds, straight to the stand-in upstream and
through a real mitmdump with the claude-code profile and memory on, in the same run.

    nice .venv/bin/python bench/load_bench.py                            # the issue's load: 50 sessions, 5 minutes
    nice .venv/bin/python bench/load_bench.py --seconds 60 --plain       # shorter, with plain mitmdump's share
    nice .venv/bin/python bench/load_bench.py --heavy --seconds 60       # the heavier load: a fast stand-in
    .venv/bin/python bench/load_bench.py --sessions 10 --seconds 20      # a quick look

The default is the load issue 19 measured: 50 sessions for 5 minutes, each answer streamed over
``--step-seconds`` (1.5 s), so that 50 sessions make ~33 requests/s direct, as there (each step took
~1.5 s). ``--heavy`` streams each answer at once (5 ms between SSE events, ~60 ms an answer): direct then
runs ~3x the issue's request rate (~100 requests/s on a quiet 2-core machine), a heavier load than the
issue's targets were set for. Both are worth reporting; say which one a figure is from.

Each session has its own API key and session id and plays a Claude Code tool loop: the stand-in
answers every request with a streamed Bash tool call, the session appends the call and its result (a
slice of this repository's own source code, ~``--step-tokens`` tokens) and sends again; every 8th
step (staggered between sessions) is a message a person wrote instead (memory searches and injects
there). A session whose history passes ``--max-tokens`` starts over as a new session. Requests are the real Claude Code
request (system prompt, tools, headers) of ../shared/eval/requests.

Printed: completed and error counts per phase, byte-identity of every streamed response (what the
client read through the proxy against what the stand-in wrote for that request), time to first byte
p50/p99 and the added p50/p99 (also after the first 10 s of each phase: the sessions all start at once,
and the first requests queue behind each other directly too, so the whole phase's p99 is the start's),
throughput and its ratio, fall-backs (a request forwarded as the client's
original because a stage ran past its budget), RSS of the proxy and of its memory process over time,
ingestion dropped / pending, and how long SIGTERM took to stop the proxy afterwards; CPU time per
proxied request of the proxy and of its memory process (steadier than latency on a shared machine), and
how long each process waited for a core per second of CPU it used (runnable, not running: mostly what
the machine's other work costs it; see ``sched_wait_s``).

    --plain              also through plain mitmdump (streaming, no contextwarden): mitmproxy's own share
    --py-spy FILE        py-spy record of the proxy during the load (collapsed stacks; --py-spy-gil: only
                         the thread holding the interpreter lock, i.e. where its CPU goes)
    --set KEY=VALUE      a proxy setting for the run (pipeline.switch_interval_ms=5 ...)
    --stagger SECONDS    start the sessions spread over this long (default 0: all at once, as the issue
                         measured; their clearing steps then fall in the same seconds of every cycle)
    --py-spy-of engine   with --py-spy: profile the engine process instead of mitmdump's
    --direct-seconds S   a shorter direct phase (its rate and time to first byte settle in ~30 s) for quick
                         comparisons; the issue's figures are taken with both phases the same length

A fall-back is a request that went out without its new work (the forward event's ``fallback``:
the session's decided state, or the client's original), because a stage ran past its budget or failed.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import re
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the same set-up as the latency benchmark (paths, offline assets, the stand-in and mitmdump helpers)
import httpx  # noqa: E402
import orjson  # noqa: E402
from proxy_latency import REQUESTS, ROOT, ProxyProcess, StandIn  # noqa: E402
from proxy_latency import pct as _pct

from contextwarden.memory.api import ApiError, RecallClient  # noqa: E402

_TOOL_ID = re.compile(rb'"type":"tool_use","id":"([^"]+)"')
HUMAN_EVERY = 8


STEADY_AFTER_S = 10.0  # the steady figures leave out the requests started in a phase's first seconds
FRESH_AFTER_S = 2.0  # the freshness probe searches a turn's word this long after the turn (issue 40's figure)
PROBE_EVERY = 16  # one turn in this many is probed (~2 searches/s at the pace: the load, not the probe)


def pct(xs: list[float], p: float) -> float | None:
    return _pct(xs, p) if xs else None


def corpus() -> str:
    """This repository's own source code, the tool output of the loop."""
    parts = []
    for folder in ("src", "plugins", "addons", "tests", "bench"):
        for p in sorted((ROOT / folder).rglob("*.py")):
            parts.append(f"# {p.relative_to(ROOT)}\n" + p.read_text(errors="replace"))
    return "\n".join(parts)


def claude_code_request() -> tuple[dict, dict]:
    """The real Claude Code request (system prompt, tools) without its messages, and its headers."""
    base = json.loads((REQUESTS / "claude-code-2.1.197-turn2.json").read_text())
    base["messages"] = []
    base.pop("context_management", None)
    captured = json.loads((REQUESTS / "claude-code-2.1.197-headers.json").read_text())["headers"]
    skip = ("host", "content-length", "connection", "accept-encoding")
    return base, {k: v for k, v in captured.items() if k.lower() not in skip}


class Session:
    def __init__(self, k: int, base: dict, headers: dict, code: str, step_chars: int, max_chars: int) -> None:
        self.k = k
        self.base = base
        self.headers0 = headers
        self.code = code
        self.step_chars = step_chars
        self.max_chars = max_chars
        self.offset = (k * 7919 * step_chars) % max(1, len(code) - step_chars)
        self.generation = 0
        self.reset()

    def reset(self) -> None:
        self.generation += 1
        self.session = str(uuid.uuid4())
        self.key = f"sk-ant-load-{self.k}-{uuid.uuid4().hex[:12]}"
        self.messages: list[dict] = [{"role": "user", "content": [
            {"type": "text", "text": f"Session {self.k}: read through the code of this repository and tell me how the "
                                     f"memory service is started and how ingestion is bounded."}]}]
        self.chars = 0
        self.step = 0
        self.word: str | None = None  # the freshness probe's word in the newest tool result (not sent yet)

    def body(self) -> bytes:
        b = dict(self.base)
        msgs = copy.deepcopy(self.messages[-1:])
        last = msgs[-1]["content"]
        if isinstance(last, list) and last:
            last[-1] = {**last[-1], "cache_control": {"type": "ephemeral"}}
        b["messages"] = self.messages[:-1] + msgs
        b["metadata"] = {"user_id": json.dumps({"device_id": "bench", "account_uuid": "", "session_id": self.session})}
        b["stream"] = True
        return orjson.dumps(b)

    def headers(self, rid: str) -> dict:
        return {**self.headers0, "x-api-key": self.key, "X-Claude-Code-Session-Id": self.session,
                "x-contextwarden-session": self.session, "x-bench-req": rid}

    def advance(self, raw: bytes) -> None:
        m = _TOOL_ID.search(raw)
        tool_id = m.group(1).decode() if m else f"toolu_{uuid.uuid4().hex[:16]}"
        self.step += 1
        # a word of its own in each step's tool call (the result is compressed, and may lose it): what the
        # freshness probe searches for once the turn that sends it is over
        self.word = f"zq{uuid.uuid4().hex[:10]}"
        self.messages.append({"role": "assistant", "content": [
            {"type": "text", "text": "I'll read the next file."},
            {"type": "tool_use", "id": tool_id, "name": "Bash",
             "input": {"command": f"cat part_{self.step}.py  # {self.word}"}}]})
        s = (self.offset + self.step * self.step_chars) % max(1, len(self.code) - self.step_chars)
        out = self.code[s:s + self.step_chars]
        content = [{"type": "tool_result", "tool_use_id": tool_id, "content": out}]
        # every 8th step a person writes, each session at its own step (k): all 50 sessions start
        # together, and with the same step they all searched memory in the same instant (50 searches
        # queued behind each other in the memory process, every one past its budget)
        if (self.step + self.k) % HUMAN_EVERY == 0:
            content.append({"type": "text", "text": f"Thanks. Now, about step {self.step}: where is the pending "
                                                    f"table drained, and what happens to session {self.k}'s turns "
                                                    f"when the proxy stops?"})
        self.messages.append({"role": "user", "content": content})
        self.chars += len(out)
        if self.chars > self.max_chars:
            self.reset()


@dataclass(frozen=True)
class Turn:
    """A completed turn the freshness probe searches for: the word its tool result carried, the session's
    API key (the search's tenant), and when its answer ended (``time.monotonic``)."""

    word: str
    key: str
    ended: float


class Phase:
    def __init__(self, name: str) -> None:
        self.name = name
        self.turns: list[Turn] = []  # turns to probe (every PROBE_EVERY-th), oldest first
        self.ttfb: list[float] = []
        self.started: list[float] = []  # seconds into the phase each ttfb's request started
        self.completed = 0
        self.errors: list[str] = []
        self.mismatched = 0
        self.checked = 0
        self.seconds = 0.0
        self.cpu_ms = 0.0


async def run_phase(phase: Phase, url: str, sessions: list[Session], seconds: float, records: dict,
                    lock: threading.Lock, stagger: float = 0.0) -> None:
    stop = time.monotonic() + seconds
    begun = time.perf_counter()

    async def one(s: Session) -> None:
        if stagger > 0:  # session k starts k/n of the way into the stagger (users who did not all start at once)
            await asyncio.sleep(stagger * s.k / max(1, len(sessions)))
        async with httpx.AsyncClient(timeout=180, trust_env=False) as c:
            while time.monotonic() < stop:
                rid = uuid.uuid4().hex
                word, body = s.word, s.body()
                t0 = time.perf_counter()
                first = None
                chunks = []
                try:
                    async with c.stream("POST", url + "/v1/messages", content=body, headers=s.headers(rid)) as r:
                        async for chunk in r.aiter_raw():
                            if first is None:
                                first = time.perf_counter() - t0
                            chunks.append(chunk)
                        status = r.status_code
                except Exception as e:
                    phase.errors.append(f"{type(e).__name__}: {e}"[:200])
                    await asyncio.sleep(0.5)
                    continue
                raw = b"".join(chunks)
                if status != 200:
                    phase.errors.append(f"status {status}: {raw[:200]!r}")
                    continue
                phase.completed += 1
                if word is not None and phase.completed % PROBE_EVERY == 0:
                    phase.turns.append(Turn(word, s.key, time.monotonic()))
                if first is not None:
                    phase.ttfb.append(first * 1000)
                    phase.started.append(t0 - begun)
                with lock:
                    rec = records.pop(rid, None)
                if rec is not None:
                    phase.checked += 1
                    if bytes(rec.response_body) != raw:
                        phase.mismatched += 1
                s.advance(raw)

    t = time.monotonic()
    await asyncio.gather(*(one(s) for s in sessions))
    phase.seconds = time.monotonic() - t


def probe_freshness(home: Path, phase: Phase, stop: threading.Event, out: list[dict]) -> None:
    """Issue 40's freshness figure: each probed turn's word searched through the recall API (scoped to its
    session's tenant, as the client's credential) ``FRESH_AFTER_S`` after its answer ended; found when a
    hit holds the word. One search at a time, in turn order: a search that comes later than due still
    counts (``age_s`` says how late)."""
    client, done = None, 0
    while not stop.is_set() or done < len(phase.turns):
        if done >= len(phase.turns):
            stop.wait(0.1)
            continue
        t = phase.turns[done]
        wait = t.ended + FRESH_AFTER_S - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        client = client or RecallClient.find(home, timeout=10)
        done += 1
        if client is None:
            continue
        asked = time.monotonic()
        try:
            hits = RecallClient(client.host, client.port, client.token, t.key, 10).call("search", query=t.word, k=5)["hits"]
        except (ApiError, OSError) as e:
            out.append({"age_s": round(asked - t.ended, 2), "found": False, "error": str(e)[:100]})
            continue
        out.append({"age_s": round(asked - t.ended, 2), "found": any(t.word in h["text"] for h in hits),
                    "ms": round((time.monotonic() - asked) * 1000, 1)})


def freshness(probes: list[dict]) -> dict:
    found = sum(1 for p in probes if p["found"])
    return {"probed": len(probes), "found": found, "pct": round(100 * found / len(probes), 1) if probes else None,
            "errors": sum(1 for p in probes if "error" in p), "age_s_p50": pct([p["age_s"] for p in probes], 50),
            "search_ms_p50": pct([p["ms"] for p in probes if "ms" in p], 50)}


def sse_events(url: str, base: dict, headers: dict) -> int:
    """How many SSE events the stand-in's answer has (to spread one answer over --step-seconds)."""
    body = {**base, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    r = httpx.post(url + "/v1/messages", content=orjson.dumps(body), headers=headers, timeout=30, trust_env=False)
    return max(1, r.content.count(b"event:"))


def rss_mb(pid: int | None) -> float | None:
    if not pid:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds a process has used (Linux /proc)."""
    if not pid:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = []
    for t in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(x) for x in t.read_text().split()]
        except OSError:
            pass
    return out


def child_running(pid: int | None, module: bytes) -> int | None:
    """The pid of ``pid``'s child running ``python -m module``, or None."""
    for k in children(pid) if pid else ():
        try:
            if module in Path(f"/proc/{k}/cmdline").read_bytes():
                return k
        except OSError:
            pass
    return None


def engine_child(pid: int | None) -> int | None:
    """The pid of mitmdump's engine process (``-m contextwarden.engine``; none with ``cw_engine`` off)."""
    return child_running(pid, b"contextwarden.engine")


def memory_child(pid: int | None) -> int | None:
    """The pid of the memory process (``-m contextwarden.memory.server``): the engine's child, or
    mitmdump's own with the engine off."""
    return child_running(engine_child(pid) or pid, b"contextwarden.memory.server")


def kids_cpu(pid: int | None, skip: int | None = None, of=cpu_s) -> dict[int, float]:
    """CPU seconds (or another per-process figure ``of``) of each live child process of ``pid`` but
    ``skip`` (the compression workers of the proxy, the embedding worker of the memory process; Linux /proc)."""
    return {k: c for k in (children(pid) if pid else ()) if k != skip and (c := of(k)) is not None}


def cpu_now(proxy_pid: int, of=cpu_s) -> dict:
    """CPU seconds used so far by the proxy (mitmdump's process), its engine, the memory process, the
    engine's other children (the compression workers, by pid) and the memory process's (its embedding
    worker, by pid); with ``of=sched_wait_s``, the seconds each waited for a core instead."""
    engine = engine_child(proxy_pid)
    mem = memory_child(proxy_pid)
    host = engine or proxy_pid
    return {"proxy": of(proxy_pid), "engine": of(engine) if engine else 0.0, "memory": of(mem),
            "compression_workers": {k: c for k, c in kids_cpu(host, mem, of).items() if k != engine},
            "embedding_worker": kids_cpu(mem, of=of)}


def searches(events: list[dict]) -> dict | None:
    """The requests that searched memory (a person's message): their hook p50/p99 against the rest, the
    memory stage's p50/p99 and its search's parts (the vector query's wait, the embedding, BM25), and how
    many had their vector half started as the request was read (``memory.prefetch``)."""
    mem = {e["flow_id"]: e["data"] for e in events if e["type"] == "memory" and "injected" in e["data"]
           and e["data"].get("skipped") not in ("tool loop step", "starting") and e.get("flow_id")}
    if not mem:
        return None
    hooks = {e["flow_id"]: e["data"]["hook_ms"] for e in events if e["type"] == "forward" and "hook_ms" in e["data"]}
    timings = [d.get("timings") or {} for d in mem.values()]

    def p(values: list, q: int):
        v = pct([x for x in values if x is not None], q)
        return None if v is None else round(v, 1)

    out = {"n": len(mem), "prefetched": sum(1 for t in timings if t.get("prefetched")),
           "timeouts": sum(1 for d in mem.values() if d.get("skipped") == "timeout"),
           "hook_ms": {q: p([hooks.get(f) for f in mem], q) for q in (50, 99)},
           "other_hook_ms": {q: p([v for f, v in hooks.items() if f not in mem], q) for q in (50, 99)},
           "stage_ms": {q: p([d.get("ms") for d in mem.values()], q) for q in (50, 99)}}
    for k in ("vector_wait_ms", "embed_ms", "vector_ms", "lexical_ms", "history_ms"):
        out[k] = {q: p([t.get(k) for t in timings], q) for q in (50, 99)}
    return out


def slowest(events: list[dict], share: float = 0.01) -> dict | None:
    """What the slowest ``share`` of the engine's request hooks had in common, against all requests: a
    memory search (a person's message), a clearing step (new stubs), a full collection under load
    during the hook (by the events' times). Says what the p99 is made of."""
    hooks = [e for e in events if e["type"] == "forward" and "hook_ms" in e["data"] and e.get("flow_id")]
    if len(hooks) < 100:
        return None
    searched = {e["flow_id"] for e in events if e["type"] == "memory" and "injected" in e["data"]
                and e["data"].get("skipped") not in ("tool loop step", "starting")}
    stepped = {e["flow_id"] for e in events if e["type"] == "clearing" and e["data"].get("new")}
    gcs = [(e["ts"] - (e["data"].get("ms") or 0) / 1000, e["ts"]) for e in events
           if e["type"] == "gc" and e["data"].get("reason") == "load"]

    def kinds(e: dict) -> tuple[bool, bool, bool]:
        end = e["ts"]
        start = end - e["data"]["hook_ms"] / 1000
        return (e["flow_id"] in searched, e["flow_id"] in stepped, any(a < end and b > start for a, b in gcs))

    hooks.sort(key=lambda e: e["data"]["hook_ms"])
    top = hooks[-max(1, int(len(hooks) * share)):]
    every = [kinds(e) for e in hooks]
    worst = [kinds(e) for e in top]
    frac = lambda xs, i: round(100 * sum(1 for x in xs if x[i]) / len(xs), 1)  # noqa: E731
    return {"n": len(top), "from_ms": round(top[0]["data"]["hook_ms"], 1),
            "searched_pct": frac(worst, 0), "searched_pct_all": frac(every, 0),
            "clearing_step_pct": frac(worst, 1), "clearing_step_pct_all": frac(every, 1),
            "during_full_gc_pct": frac(worst, 2), "during_full_gc_pct_all": frac(every, 2)}


def steal_now() -> tuple[int, int]:
    """(stolen, all) CPU ticks of the machine so far (/proc/stat): time the hypervisor ran others on
    our virtual cores. A phase whose share is high ran on a slower machine than one whose share is not."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return f[7] if len(f) > 7 else 0, sum(f[:8])
    except (OSError, ValueError, IndexError):
        return 0, 0


def steal_pct(a: tuple[int, int], b: tuple[int, int]) -> float | None:
    return None if b[1] <= a[1] else round(100 * (b[0] - a[0]) / (b[1] - a[1]), 2)


def sched_wait_s(pid: int | None) -> float | None:
    """Seconds the process's live threads have spent runnable but waiting for a core (Linux
    /proc/PID/task/*/schedstat, its second field): what the machine's other work costs the process. A
    thread waiting for the interpreter lock sleeps, but wakes each switch interval to ask for it, and
    those wake-ups count when no core is free: the figure mixes the CPU and the lock's convoy."""
    if not pid:
        return None
    total, seen = 0, False
    for t in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(t.read_text().split()[1])
            seen = True
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9 if seen else None


def cpu_spent(before: dict, after: dict) -> dict[str, float | None]:
    """CPU seconds between two :func:`cpu_now` (None: a process was not there); a worker started
    in between counts whole."""
    out = {}
    for k, b in after.items():
        a = before[k]
        if isinstance(b, dict):
            out[k] = sum(c - a.get(p, 0.0) for p, c in b.items())
        else:
            out[k] = None if a is None or b is None else b - a
    return out


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """(name, CPU seconds) of each thread of a process, by OS thread id (Linux /proc; Python 3.12 does
    not name OS threads, so pool threads show as the process's name). Per-thread CPU says where the
    time went; a py-spy ``--gil`` profile does not (it attributes samples to the lock's last holder,
    and showed the event loop at three quarters of the CPU when it used a quarter)."""
    import os

    out = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for t in tasks:
        try:
            f = (t / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(t.name)] = (t.name, (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK"))
    return out


def by_thread(pid: int, before: dict, after: dict, requests: int) -> dict[str, float]:
    """ms of CPU per request: the event loop (the main thread) and the other threads together."""
    loop = after.get(pid, ("", 0.0))[1] - before.get(pid, ("", 0.0))[1]
    rest = sum(c - before.get(tid, ("", 0.0))[1] for tid, (_, c) in after.items() if tid != pid)
    n = max(1, requests)
    return {"event loop": round(loop * 1000 / n, 2), "worker and other threads": round(rest * 1000 / n, 2)}


def start_py_spy(pid: int, out: Path, seconds: float, gil: bool = False):
    """``py-spy record`` of the proxy process for the load phase (collapsed stacks: one line a stack)."""
    import shutil
    import subprocess

    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "50", "--format", "raw",
           "--threads", "--output", str(out)] + (["--gil"] if gil else [])
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def sample_rss(pids: dict, out: list, stop: threading.Event, every: float) -> None:
    t0 = time.monotonic()
    while not stop.wait(every):
        out.append((round(time.monotonic() - t0, 1), {k: rss_mb(p()) for k, p in pids.items()}))


def pending_items(home: Path) -> int | None:
    p = home / "memory-pending.sqlite"
    if not p.exists():
        return None
    db = sqlite3.connect(str(p))
    try:
        return int(db.execute("SELECT COALESCE(SUM(n), 0) FROM pending").fetchone()[0])
    finally:
        db.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=300, help="seconds of load per phase (default 300, as the issue)")
    ap.add_argument("--direct-seconds", type=float, default=None,
                    help="seconds of the direct phase (default: --seconds); a shorter one for quick comparisons")
    ap.add_argument("--step-tokens", type=int, default=3000)
    ap.add_argument("--max-tokens", type=int, default=150_000, help="a session starts over past this history")
    ap.add_argument("--step-seconds", type=float, default=1.5,
                    help="seconds the stand-in takes to stream one answer (default 1.5: the issue's pace, ~33 "
                         "requests/s direct with 50 sessions)")
    ap.add_argument("--heavy", action="store_true",
                    help="the heavier load: answers streamed at once (5 ms between SSE events), ~3x the issue's "
                         "request rate direct")
    ap.add_argument("--sse-delay", type=float, default=None,
                    help="seconds between the stand-in's SSE events (overrides --step-seconds and --heavy)")
    ap.add_argument("--profile", default="claude-code")
    ap.add_argument("--stagger", type=float, default=0.0, metavar="SECONDS",
                    help="start the sessions spread over this many seconds, in every phase (default 0: all at "
                         "once, as the issue measured: their histories then grow in step, and every session's "
                         "clearing step falls in the same few seconds); ~100 s, one session's life at the "
                         "issue's pace, is the steady state of independent users")
    ap.add_argument("--idle", type=float, default=0, help="seconds of idle after the load, RSS sampled (shrinks?)")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument("--py-spy", default=None, metavar="FILE",
                    help="record the proxy process with py-spy during the load (collapsed stacks to FILE)")
    ap.add_argument("--py-spy-gil", action="store_true", help="with --py-spy: only the thread holding the GIL")
    ap.add_argument("--py-spy-of", choices=("proxy", "engine"), default="proxy",
                    help="with --py-spy: mitmdump's process (default) or the engine's")
    ap.add_argument("--plain", action="store_true",
                    help="also run the sessions through plain mitmdump (no contextwarden): mitmproxy's own share")
    ap.add_argument("--tree", type=Path, default=None, metavar="DIR",
                    help="run the proxy from another tree's package as installed (DIR/contextwarden), e.g. main's: "
                         "pairs of runs against this tree")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a proxy setting for this run (CONTEXTWARDEN_ env override, e.g. pipeline.stage_budget_ms=100)")
    args = ap.parse_args()

    base, hdrs = claude_code_request()
    code = corpus()
    step_chars = args.step_tokens * 4

    def make_sessions() -> list[Session]:
        return [Session(k, base, hdrs, code, step_chars, args.max_tokens * 4) for k in range(args.sessions)]

    records: dict = {}
    lock = threading.Lock()
    standin = StandIn(sse_delay=0.0)
    standin.planner = lambda api, body: ("I'll read the next file.", ("Bash", {"command": "cat next.py"}))

    def keep(rec) -> None:  # only what byte-identity needs, dropped once checked
        rid = rec.header("x-bench-req")
        if rid:
            with lock:
                records[rid] = rec

    standin.start()
    if args.sse_delay is not None:
        pace = f"--sse-delay {args.sse_delay}"
        standin.sse_delay = args.sse_delay
    elif args.heavy:
        pace = "--heavy (answers streamed at once: 5 ms between SSE events)"
        standin.sse_delay = 0.005
    else:
        gaps = max(1, sse_events(standin.url, base, hdrs) - 1)
        standin.sse_delay = args.step_seconds / gaps
        pace = f"the issue's: each answer streamed over {args.step_seconds:g} s ({gaps + 1} SSE events)"
    print(f"pace: {pace}", flush=True)
    standin._record = keep
    work = Path(tempfile.mkdtemp(prefix="cw-load-"))
    results: dict = {"tree": str(args.tree or ROOT), "sessions": args.sessions, "seconds": args.seconds, "step_tokens": args.step_tokens, "pace": pace, "stagger_s": args.stagger,
                     "sse_delay_s": standin.sse_delay}
    try:
        direct = Phase("direct")
        direct_s = args.direct_seconds if args.direct_seconds is not None else args.seconds
        print(f"direct: {args.sessions} sessions for {direct_s:.0f} s ...", flush=True)
        st0 = steal_now()
        asyncio.run(run_phase(direct, standin.url, make_sessions(), direct_s, records, lock, args.stagger))
        results["steal_pct"] = {"direct": steal_pct(st0, steal_now())}
        records.clear()
        plain = None
        if args.plain:
            plain = Phase("mitmdump")
            # streaming responses as contextwarden does (mitmdump buffers them by default)
            pp = ProxyProcess(work / "plain", profile=None, script=None, reverse=standin.url, name="plain",
                              options={"stream_large_bodies": "1"})
            pp.start()
            print(f"plain mitmdump: {args.sessions} sessions for {args.seconds:.0f} s ...", flush=True)
            c0 = cpu_s(pp.proc.pid)
            asyncio.run(run_phase(plain, pp.url, make_sessions(), args.seconds, records, lock, args.stagger))
            plain.cpu_ms = (cpu_s(pp.proc.pid) - c0) * 1000 / max(1, plain.completed)
            pp.stop()
            records.clear()

        env = {}
        for kv in args.set:
            k, v = kv.split("=", 1)
            env["CONTEXTWARDEN_" + "__".join(k.upper().split("."))] = v
        tree = {}
        if args.tree is not None:
            env["PYTHONPATH"] = str(args.tree)
            tree["script"] = args.tree / "contextwarden" / "addons" / "contextwarden.py"
        memory_off = env.get("CONTEXTWARDEN_MEMORY__ENABLED", "").lower() in ("false", "0", "no")  # (no memory_status comes)
        proxy = ProxyProcess(work, profile=args.profile, reverse=standin.url, name="load", env=env or None,
                             ready_events=("startup",) if memory_off else ("startup", "memory_status"),
                             startup_timeout=300, **tree)
        t = time.monotonic()
        proxy.start()
        mem_pid = [None]
        evs = proxy.events("memory_process", wait=5)
        if evs:
            mem_pid[0] = evs[-1]["data"]["pid"]
        print(f"proxy ready in {time.monotonic() - t:.1f} s (memory process pid {mem_pid[0]})", flush=True)

        def current_mem_pid():
            # the proxy's child running the memory server (read from /proc: parsing the event log every
            # few seconds cost the bench's own process, which also runs the clients, ~0.2 of a core once
            # the log had grown, and the log rotates)
            return memory_child(proxy.proc.pid)

        rss: list = []
        stop = threading.Event()
        sampler = threading.Thread(target=sample_rss, args=({"proxy": lambda: proxy.proc.pid,
                                                             "engine": lambda: engine_child(proxy.proc.pid),
                                                             "memory": current_mem_pid},
                                                            rss, stop, 5.0), daemon=True)
        sampler.start()
        through = Phase("proxy")
        mark = proxy.mark()
        print(f"proxy: {args.sessions} sessions for {args.seconds:.0f} s ...", flush=True)
        engine_pid = engine_child(proxy.proc.pid)
        spied = engine_pid if args.py_spy_of == "engine" and engine_pid else proxy.proc.pid
        spy = start_py_spy(spied, Path(args.py_spy), args.seconds, args.py_spy_gil) if args.py_spy else None
        th0, te0 = thread_cpu(proxy.proc.pid), thread_cpu(engine_pid) if engine_pid else {}
        cpu0, wait0 = cpu_now(proxy.proc.pid), cpu_now(proxy.proc.pid, of=sched_wait_s)
        st0 = steal_now()
        probes: list[dict] = []
        probed = threading.Event()
        prober = threading.Thread(target=probe_freshness, args=(proxy.home, through, probed, probes), daemon=True)
        prober.start()
        asyncio.run(run_phase(through, proxy.url, make_sessions(), args.seconds, records, lock, args.stagger))
        probed.set()
        prober.join(60)
        results["steal_pct"]["proxy"] = steal_pct(st0, steal_now())
        cpu, waited = cpu_spent(cpu0, cpu_now(proxy.proc.pid)), cpu_spent(wait0, cpu_now(proxy.proc.pid, of=sched_wait_s))
        th1, te1 = thread_cpu(proxy.proc.pid), thread_cpu(engine_pid) if engine_pid else {}
        if spy is not None:
            try:
                spy.wait(30)
            except Exception:
                spy.kill()
        if args.idle:
            print(f"idle {args.idle:.0f} s ...", flush=True)
            time.sleep(args.idle)
        stop.set()
        events = proxy._read_events()[mark:]
        forwards = [e["data"] for e in events if e["type"] == "forward"]
        # a fall-back: the request went without its new work, as the session's decided state or the
        # client's original (forward event's ``fallback``), because a stage overran or failed
        fallbacks = [f for f in forwards if f.get("fallback")]
        overrun_by = {}
        for e in events:
            if e["type"] == "stage" and e["data"].get("status") == "timeout":
                overrun_by[e["data"].get("stage")] = overrun_by.get(e["data"].get("stage"), 0) + 1
        stage_timeouts = sum(1 for e in events if e["type"] == "stage" and e["data"].get("status") == "timeout")
        # a result the compression worker gave no answer for in time goes whole (not a fall-back)
        left_whole = sum(1 for e in events if e["type"] == "error" and e["data"].get("where") == "compression"
                         and e["data"].get("action") == "not compressed")
        compressed = sum(int(e["data"].get("compressed") or 0) for e in events if e["type"] == "compression")
        mem = [e["data"] for e in events if e["type"] == "memory"]
        dropped = sum(int(d.get("dropped") or 0) for d in mem)
        ingested = sum(int(d.get("ingested") or 0) for d in mem)
        injected = sum(1 for d in mem if d.get("injected"))
        searched = sum(1 for d in mem if "injected" in d and d.get("skipped") not in ("tool loop step", "starting"))
        mem_timeouts = sum(1 for d in mem if d.get("skipped") == "timeout")
        # why the searches that injected nothing did not (the memory event's ``skipped``)
        why_not = Counter(str(d.get("skipped")) for d in mem if "injected" in d and not d.get("injected")
                          and d.get("skipped") not in ("tool loop step", "starting"))
        # the full collections run under load (pipeline.gc_full_s): how many, and their pauses
        full_gcs = [e["data"] for e in events if e["type"] == "gc" and e["data"].get("reason") == "load"]
        full_gc_ms = [d.get("ms") or 0 for d in full_gcs]
        full_gc_cpu = [d.get("cpu_ms") or 0 for d in full_gcs]
        turn_drops = max([int(e["data"].get("dropped") or 0) for e in events if e["type"] == "backpressure"] or [0])
        pending = pending_items(proxy.home)
        t = time.monotonic()
        proxy.proc.send_signal(signal.SIGTERM)
        proxy.wait_stopped(120)
        sigterm_s = time.monotonic() - t
        pending_after = pending_items(proxy.home)
    finally:
        standin.stop()

    d_p50, d_p99 = pct(direct.ttfb, 50), pct(direct.ttfb, 99)
    p_p50, p_p99 = pct(through.ttfb, 50), pct(through.ttfb, 99)
    # after the first STEADY_AFTER_S of each phase: all sessions start at once, and the first requests
    # queue behind each other directly too (their p99 is the start's, not the load's)
    steady: dict[str, dict[str, float | int | None]] = {}
    for name, ph in (("direct", direct), ("proxy", through)):
        xs = [x for x, t0 in zip(ph.ttfb, ph.started) if t0 >= STEADY_AFTER_S]
        steady[name] = {"n": len(xs), "p50": pct(xs, 50), "p99": pct(xs, 99)}
    sd, sp = steady["direct"], steady["proxy"]
    results.update({
        "direct": {"completed": direct.completed, "errors": len(direct.errors), "rps": direct.completed / direct.seconds,
                   "ttfb_p50_ms": d_p50, "ttfb_p99_ms": d_p99, "identical": direct.checked - direct.mismatched,
                   "checked": direct.checked},
        "proxy": {"completed": through.completed, "errors": len(through.errors), "rps": through.completed / through.seconds,
                  "ttfb_p50_ms": p_p50, "ttfb_p99_ms": p_p99, "identical": through.checked - through.mismatched,
                  "checked": through.checked},
        "added_ttfb_p50_ms": None if p_p50 is None or d_p50 is None else p_p50 - d_p50,
        "added_ttfb_p99_ms": None if p_p99 is None or d_p99 is None else p_p99 - d_p99,
        "steady_after_s": STEADY_AFTER_S,
        "steady_ttfb_ms": steady,
        "steady_added_ttfb_p50_ms": None if sp["p50"] is None or sd["p50"] is None else sp["p50"] - sd["p50"],
        "steady_added_ttfb_p99_ms": None if sp["p99"] is None or sd["p99"] is None else sp["p99"] - sd["p99"],
        "throughput_ratio": (through.completed / through.seconds) / max(1e-9, direct.completed / direct.seconds),
        "fallbacks": len(fallbacks), "forwards": len(forwards), "stage_timeouts": stage_timeouts,
        "fallbacks_decided": sum(1 for f in fallbacks if f.get("fallback") == "decided"), "overruns_by_stage": overrun_by,
        "compressed": compressed, "compression_left_whole": left_whole,
        "memory": {"ingested": ingested, "dropped": dropped, "pending_at_end": pending, "pending_after_sigterm": pending_after,
                   "searches": searched, "injected": injected, "search_timeouts": mem_timeouts,
                   "not_injected": dict(why_not.most_common()),
                   "fresh": freshness(probes)},
        "turn_work_dropped": turn_drops,
        # where a request's time goes in the proxy (p50, ms): from the request hook's start to the forward
        # event (hook), prepare's start to the forward (pipeline), and their parts (the context's timings:
        # count_in, parse, to_stages = prepare's start to the first stage, waits included; stages;
        # to_loop = the stage thread's end to the loop having the answer; offload_* = where the
        # compression worker's calls waited: queue, send, work, back, compress/offload.py)
        "hook_ms": {p: pct([f["hook_ms"] for f in forwards if "hook_ms" in f], p) for p in (50, 99)},
        "slowest_hooks": slowest(events),
        "searches": searches(events),
        "pipeline_ms": {p: pct([f["pipeline_ms"] for f in forwards if "pipeline_ms" in f], p) for p in (50, 99)},
        "timings_p50": {k: pct([f["timings"][k] for f in forwards if k in (f.get("timings") or {})], 50)
                        for k in sorted({k for f in forwards for k in (f.get("timings") or {})})},
        "stage_ms_p50": {n: pct([s["ms"] for f in forwards for s in f.get("stages") or [] if s.get("stage") == n], 50)
                         for n in sorted({s.get("stage") for f in forwards for s in f.get("stages") or []})},
        "cpu_ms_per_request": {k: None if s is None else round(s * 1000 / max(1, through.completed), 2) for k, s in cpu.items()},
        # where the proxy's CPU went, by thread: the event loop (mitmproxy, our hooks) against the
        # workers (prepare and count: core; stages and finish: stage; turn work; event log...)
        "proxy_cpu_ms_per_request_by_thread": by_thread(proxy.proc.pid, th0, th1, through.completed),
        "engine_cpu_ms_per_request_by_thread": by_thread(engine_pid, te0, te1, through.completed) if engine_pid else None,
        "cpu_share_of_core": {k: None if s is None else round(s / through.seconds, 2) for k, s in cpu.items()},
        # runnable but not running, per second of CPU: > 1 means the process waited for a core longer than it ran
        "core_wait_per_cpu_s": {k: None if w is None or not cpu.get(k) else round(w / cpu[k], 2) for k, w in waited.items()},
        "rss_mb": rss, "sigterm_s": sigterm_s,
        # the idle spell's forgetting (collector.background): where the engine's memory was right after it
        "forget": [e["data"] for e in events if e["type"] == "gc" and e["data"].get("reason") == "forget"],
        "full_gc_under_load": {"count": len(full_gc_ms), "ms_p50": pct(full_gc_ms, 50), "ms_max": max(full_gc_ms or [0]),
                              "cpu_ms_p50": pct(full_gc_cpu, 50), "cpu_ms_max": max(full_gc_cpu or [0])},
        "error_samples": (direct.errors + through.errors)[:5],
    })
    if plain is not None:
        x_p50, x_p99 = pct(plain.ttfb, 50), pct(plain.ttfb, 99)
        results["mitmdump"] = {"completed": plain.completed, "errors": len(plain.errors),
                               "rps": plain.completed / plain.seconds, "ttfb_p50_ms": x_p50, "ttfb_p99_ms": x_p99,
                               "identical": plain.checked - plain.mismatched, "checked": plain.checked,
                               "cpu_ms_per_request": round(plain.cpu_ms, 2)}
    r = results
    print()
    print(f"{args.sessions} sessions, {args.seconds:.0f} s a phase, pace: {pace}"
          + (f", starts spread over {args.stagger:g} s" if args.stagger else ", all starting at once"))
    print(f"{'':10}{'completed':>10}{'errors':>8}{'req/s':>8}{'ttfb p50':>10}{'ttfb p99':>10}{'identical':>14}")
    for name in ("direct", "mitmdump", "proxy"):
        if name not in r:
            continue
        x = r[name]
        print(f"{name:10}{x['completed']:>10}{x['errors']:>8}{x['rps']:>8.1f}{x['ttfb_p50_ms'] or 0:>9.1f}m"
              f"{x['ttfb_p99_ms'] or 0:>9.1f}m{x['identical']:>8}/{x['checked']}")
    st = r.get("steal_pct") or {}
    print(f"CPU time the hypervisor took from this machine (steal): direct phase {st.get('direct')}%, proxy phase "
          f"{st.get('proxy')}% (a phase with more ran on a slower machine)")
    print(f"added time to first byte: p50 {r['added_ttfb_p50_ms'] or 0:.1f} ms, p99 {r['added_ttfb_p99_ms'] or 0:.1f} ms")
    steady_ms = r.get("steady_ttfb_ms") or {}
    if r.get("steady_added_ttfb_p50_ms") is not None:
        d, p = steady_ms["direct"], steady_ms["proxy"]
        print(f"  after the first {r['steady_after_s']:.0f} s of each phase (the start's queue left out): direct p50/p99 "
              f"{d['p50']:.1f}/{d['p99']:.1f} ms, proxy {p['p50']:.1f}/{p['p99']:.1f} ms; "
              f"added p50 {r['steady_added_ttfb_p50_ms']:.1f} ms, p99 {r['steady_added_ttfb_p99_ms']:.1f} ms")
    print(f"throughput through the proxy: {r['throughput_ratio'] * 100:.0f}% of direct")
    print(f"fall-backs (a stage past its budget or failed): {r['fallbacks']} of {r['forwards']} requests "
          f"({100 * r['fallbacks'] / max(1, r['forwards']):.2f}%; {r['fallbacks_decided']} kept the session's decisions); "
          f"stage timeouts {r['stage_timeouts']} {r['overruns_by_stage'] or ''}")
    print(f"compression: {r['compressed']} results compressed at first sight, {r['compression_left_whole']} left whole "
          f"(its worker gave no answer in time, died or could not start)")
    m = r["memory"]
    print(f"memory: {m['ingested']} items ingested, {m['dropped']} dropped, {m['pending_at_end']} pending at the end "
          f"(embedding lag), {m['pending_after_sigterm']} left pending after SIGTERM; searches {m['searches']}, "
          f"injected {m['injected']}, search timeouts {m['search_timeouts']}; turn work dropped {r['turn_work_dropped']}")
    print(f"memory: why nothing was injected: {m['not_injected'] or '-'}")
    f = m["fresh"]
    print(f"fresh: {f['found']} of {f['probed']} turns found by their word {FRESH_AFTER_S:g} s or more after the turn "
          f"({f['pct']}%; search p50 {f['search_ms_p50']} ms, {f['errors']} errors; probed at p50 {f['age_s_p50']} s)")
    if "mitmdump" in r:
        m0 = r["mitmdump"]
        print(f"plain mitmdump: {m0['rps'] / max(1e-9, r['direct']['rps']) * 100:.0f}% of direct, CPU per request "
              f"{m0['cpu_ms_per_request']} ms (mitmproxy's own share of the proxy's)")
    c, sh = r["cpu_ms_per_request"], r["cpu_share_of_core"]
    print(f"CPU per proxied request: proxy process {c['proxy']} ms, engine process {c['engine']} ms, memory process "
          f"{c['memory']} ms, compression workers {c['compression_workers']} ms, memory's embedding worker "
          f"{c['embedding_worker']} ms (cores busy: proxy {sh['proxy']}, engine {sh['engine']}, memory {sh['memory']}, "
          f"compression {sh['compression_workers']}, embedding {sh['embedding_worker']})")
    print("waited for a core per second of CPU (runnable, not running: the machine's share): " + ", ".join(
        f"{k} {v}" for k, v in r["core_wait_per_cpu_s"].items()))
    print("proxy CPU per request by thread (ms): " + ", ".join(
        f"{k} {v}" for k, v in r["proxy_cpu_ms_per_request_by_thread"].items()))
    if r["engine_cpu_ms_per_request_by_thread"]:
        print("engine CPU per request by thread (ms): " + ", ".join(
            f"{k} {v}" for k, v in r["engine_cpu_ms_per_request_by_thread"].items()))
    def ms(v):
        return "-" if v is None else f"{v:.1f}"

    print(f"in the proxy's request hook: p50/p99 {ms(r['hook_ms'][50])}/{ms(r['hook_ms'][99])} ms "
          f"(prepare to forward {ms(r['pipeline_ms'][50])}/{ms(r['pipeline_ms'][99])}); its parts, p50 ms: "
          + ", ".join(f"{k} {ms(v)}" for k, v in r["timings_p50"].items()))
    w = r.get("slowest_hooks")
    if w:
        print(f"the slowest 1% of hooks ({w['n']}, from {w['from_ms']} ms): with a memory search {w['searched_pct']}% "
              f"(of all requests {w['searched_pct_all']}%), a clearing step {w['clearing_step_pct']}% "
              f"({w['clearing_step_pct_all']}%), during a full collection {w['during_full_gc_pct']}% "
              f"({w['during_full_gc_pct_all']}%)")
    q = r.get("searches")
    if q:
        def pq(d):
            return f"{ms(d[50])}/{ms(d[99])}"

        print(f"requests with a memory search ({q['n']}, {q['prefetched']} started as read, {q['timeouts']} past the "
              f"budget): hook p50/p99 {pq(q['hook_ms'])} ms (the others {pq(q['other_hook_ms'])}), memory stage "
              f"{pq(q['stage_ms'])}; its parts p50/p99: vector wait {pq(q['vector_wait_ms'])}, embedding "
              f"{pq(q['embed_ms'])}, vector query {pq(q['vector_ms'])}, BM25 {pq(q['lexical_ms'])}, history index "
              f"{pq(q['history_ms'])}")
    print("stages, p50 ms: " + ", ".join(f"{k} {ms(v)}" for k, v in r["stage_ms_p50"].items()))
    print("RSS MB (t s: proxy / engine / memory): " + ", ".join(
        f"{t:.0f}: {v['proxy'] or 0:.0f}/{v['engine'] or 0:.0f}/{v['memory'] or 0:.0f}" for t, v in rss))
    for f in r["forget"]:
        print("idle forget: " + ", ".join(f"{k} {v}" for k, v in f.items() if k != "reason"))
    g = r["full_gc_under_load"]
    print(f"full collections under load (pipeline.gc_full_s): {g['count']}, wall p50 {ms(g['ms_p50'])} ms, max {g['ms_max']} ms; "
          f"its own CPU p50 {ms(g['cpu_ms_p50'])} ms, max {g['cpu_ms_max']} ms")
    print(f"SIGTERM to exit: {r['sigterm_s']:.1f} s")
    if r["error_samples"]:
        print("errors:", *r["error_samples"], sep="\n  ")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0 if not (direct.errors or through.errors or through.mismatched) else 1


if __name__ == "__main__":
    sys.exit(main())
