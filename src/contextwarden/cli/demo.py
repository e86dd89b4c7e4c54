"""``contextwarden demo``: the proxy against a local stand-in, with a scripted session, in one command."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import orjson

from ._common import cli_name, home_of

START_S = 300  # the proxy's first start: imports, tokenizers, the memory process


def register(sub) -> None:
    p = sub.add_parser("demo", help="try it locally: a stand-in upstream, the proxy and a scripted session",
                       description="Starts a local stand-in for Anthropic's API and the proxy (profile demo: a 16K "
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
    from contextwarden.demo import StandIn, session

    home = home_of(args) if args.home else Path(tempfile.mkdtemp(prefix="contextwarden-demo-"))
    port = args.port or _free_port()
    with StandIn() as upstream:
        cmd = [sys.executable, "-m", "contextwarden", "run", "--home", str(home), "--port", str(port),
               "--profile", "demo", "--mode", f"reverse:{upstream.url}"]
        print(f"contextwarden demo: stand-in upstream on {upstream.url}; proxy on 127.0.0.1:{port}; data in {home}")
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
            from contextwarden.tui.app import ContextWardenApp
            from contextwarden.tui.client import LiveClient

            ContextWardenApp(LiveClient(home)).run()
            return 0
        finally:
            proc.send_signal(2)  # as Ctrl-C: the proxy shuts down its engine and memory
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
