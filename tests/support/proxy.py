"""Runs a real ``mitmdump`` process with contextwarden loaded, for end-to-end tests and benchmarks.

    with ProxyProcess(tmp, profile="observe-only", reverse=standin.url) as proxy:
        httpx.post(proxy.url + "/v1/messages", ...)
        proxy.events("request")

Each process gets its own ``confdir`` (a fresh mitmproxy CA, at ``proxy.ca_pem``) and ``cw_home``,
listens on 127.0.0.1 on a port the OS picks, and is considered started once it listens and
contextwarden wrote its ``startup`` event (and any other ``ready_events``: pass ``memory_status`` to
wait for the memory warm-up, whose background threads otherwise compete with the first requests). ``script=None`` runs plain mitmdump (the benchmark's
baseline).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "addons" / "contextwarden.py"
REDIRECT = Path(__file__).resolve().parent / "redirect.py"
MITMDUMP = Path(sys.executable).parent / "mitmdump"

_LISTENING = re.compile(r"listening at (?:\*|[\d.]+|\[[0-9a-f:]+\]):(\d+)", re.I)


class ProxyStartError(RuntimeError):
    pass


class ProxyProcess:
    """A mitmdump subprocess. ``reverse`` is the upstream URL for reverse mode; without it, regular mode.

    ``redirect`` (regular mode): send api.anthropic.com / api.openai.com to this loopback URL with
    ``tests/support/redirect.py`` (loaded after contextwarden) and use ``connection_strategy=lazy``.
    """

    def __init__(self, workdir: Path, *, profile: str | os.PathLike | None = "observe-only", reverse: str | None = None,
                 redirect: str | None = None, plugins: str | os.PathLike | None = None,
                 script: Path | None = SCRIPT, extra_scripts: Iterable[Path] = (), options: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None, args: Iterable[str] = (), name: str = "proxy",
                 ready_events: Iterable[str] = ("startup",), startup_timeout: float = 120.0) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.home = self.workdir / "cw-home"
        self.confdir = self.workdir / "mitmproxy"
        self.profile = profile
        self.reverse = reverse
        self.redirect = redirect
        self.plugins = plugins
        self.script = script
        self.extra_scripts = list(extra_scripts)
        self.options = dict(options or {})
        self.env = env or {}
        self.args = list(args)
        self.ready_events = tuple(ready_events)
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self._t_launch = time.monotonic()
        self.port: int | None = None
        self._out = self.workdir / f"{name}.stdout"
        self._err = self.workdir / f"{name}.stderr"

    # -- lifecycle ---------------------------------------------------------------------------

    def command(self) -> list[str]:
        cmd = [str(MITMDUMP), "--listen-host", "127.0.0.1", "--listen-port", "0",
               "--set", f"confdir={self.confdir}"]
        if self.reverse:
            cmd += ["--mode", f"reverse:{self.reverse}"]
        if self.script is not None:
            cmd += ["-s", str(self.script), "--set", f"cw_home={self.home}"]
            if self.profile is not None:
                cmd += ["--set", f"cw_profile={self.profile}"]
            if self.plugins is not None:
                cmd += ["--set", f"cw_plugins={self.plugins}"]
        scripts = list(self.extra_scripts)
        options = dict(self.options)
        if self.redirect:
            scripts.append(REDIRECT)
            options.setdefault("redirect_to", self.redirect)
            options.setdefault("connection_strategy", "lazy")
        for s in scripts:  # after contextwarden's, so it classifies by the real host
            cmd += ["-s", str(s)]
        for k, v in options.items():
            cmd += ["--set", f"{k}={v}"]
        return cmd + self.args

    def start(self) -> ProxyProcess:
        """Launch and wait until ready."""
        self.launch()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def launch(self) -> None:
        """Start the process without waiting (start several, then ``wait_ready`` each: they warm up together)."""
        if not MITMDUMP.exists():
            raise ProxyStartError(f"mitmdump not found next to the Python interpreter: {MITMDUMP}")
        env = {**os.environ, **self.env}
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("PYTHONFAULTHANDLER", "1")  # (SIGABRT prints every thread's stack: wait_stopped)
        self._t_launch = time.monotonic()
        with open(self._out, "wb") as out, open(self._err, "wb") as err:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         env=env, cwd=ROOT, start_new_session=True)

    def wait_ready(self) -> None:
        if not wait_until(self._started, self._t_launch + self.startup_timeout - time.monotonic()):
            raise ProxyStartError(f"mitmdump did not start in {self.startup_timeout:.0f} s:\n{self.output_ends()}")

    def _started(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise ProxyStartError(f"mitmdump exited with {self.proc.returncode}:\n{self.output_ends()}")
        if self.port is None:
            m = _LISTENING.search(self.output_text())
            if m:
                self.port = int(m.group(1))
        return self.port is not None and _accepts(self.port) and (self.script is None or self._ready())

    def _ready(self) -> bool:
        seen = {e["type"] for e in self._read_events()}
        # the TUI's file is written once mitmdump listens, just after it says so
        published = "event server on" not in self.output_text() or (self.home / "tui.json").exists()
        return published and all(t in seen for t in self.ready_events)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGINT (mitmproxy shuts down its addons, contextwarden flushes its log), then kill (beside two CPU-bound
        loops a shutdown took over 15 s: the memory process stores what it was handed first)."""
        self.interrupt()
        return self.wait_stopped(timeout)

    def interrupt(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def wait_stopped(self, timeout: float = 60.0) -> int | None:
        p = self.proc
        if p is None:
            return None
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:  # what it waits for, printed (a shutdown that never ended, seen under load)
            p.send_signal(signal.SIGABRT)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
            print(f"mitmdump did not exit within {timeout:.0f} s; its threads at SIGABRT:\n{self.output_text()[-12000:]}")
            return p.wait(60)

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- what tests use ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca_pem(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    @property
    def events_path(self) -> Path:
        return self.home / "logs" / "events.jsonl"

    def _read_events(self) -> list[dict]:
        """Every event written, the rotated logs' (events.jsonl.N ... .1) before the current one's."""
        out = []
        rotated = sorted((p for p in self.events_path.parent.glob(self.events_path.name + ".*")
                          if p.suffix[1:].isdigit()), key=lambda p: -int(p.suffix[1:]))
        for path in [*rotated, self.events_path]:
            try:
                with open(path, "rb") as f:
                    for line in f:
                        try:
                            out.append(json.loads(line))
                        except ValueError:  # a line being written
                            continue
            except FileNotFoundError:
                pass
        return out

    def events(self, type: str | None = None, *, since: int = 0, wait: float = 0.5, **match) -> list[dict]:
        """Parsed events (optionally of one ``type``, after the ``since`` mark, whose ``data`` has ``match``'s
        values), waiting up to ``wait`` seconds for at least one to be written."""
        return wait_until(lambda: [e for e in self._read_events()[since:] if (type is None or e["type"] == type)
                                   and all((e.get("data") or {}).get(k) == v for k, v in match.items())], wait)

    def wait_events(self, predicate, n: int = 1, *, since: int = 0, timeout: float = 15.0) -> list[dict]:
        """Wait until ``n`` events after ``since`` satisfy ``predicate``; returns the matching events."""
        evs: list[dict] = []

        def enough() -> bool:
            evs[:] = [e for e in self._read_events()[since:] if predicate(e)]
            return len(evs) >= n
        wait_until(enough, timeout)
        return evs

    def flow_id(self, path_contains: str, *, since: int = 0, timeout: float = 15.0) -> str | None:
        """The flow id of the ``request`` event whose path contains ``path_contains`` (make it unique)."""
        evs = self.wait_events(lambda e: e["type"] == "request" and path_contains in (e["data"].get("path") or ""),
                               since=since, timeout=timeout)
        return evs[0]["flow_id"] if evs else None

    def flow_events(self, flow_id: str, type: str, n: int = 1, *, timeout: float = 15.0) -> list[dict]:
        """Events of one flow (waiting until ``n`` of ``type`` are written)."""
        return self.wait_events(lambda e: e["type"] == type and e.get("flow_id") == flow_id, n, timeout=timeout)

    def mark(self) -> int:
        """The number of events written so far; pass it as ``since`` to see only later ones."""
        # what earlier requests queued is written once the log stops growing (a loaded machine schedules
        # the log's writer thread late)
        counts: list[int] = []

        def settled() -> bool:
            counts.append(len(self._read_events()))
            return len(counts) > 1 and counts[-1] == counts[-2]
        wait_until(settled, 3.0, interval=0.15)
        return counts[-1]

    def leaks(self, secret: str) -> list[str]:
        """Where ``secret`` was written: files anywhere under cw_home, and mitmdump's stdout/stderr."""
        return files_holding(self.home, secret.encode()) + [
            name for name, text in (("stdout", self.stdout_text()), ("stderr", self.stderr_text())) if secret in text]

    def stdout_text(self) -> str:
        return self._out.read_text(errors="replace") if self._out.exists() else ""

    def stderr_text(self) -> str:
        return self._err.read_text(errors="replace") if self._err.exists() else ""

    def output_text(self) -> str:
        return self.stdout_text() + self.stderr_text()

    def output_ends(self, n: int = 2000) -> str:
        """The output's first and last ``n`` characters: a start's cause comes first (mitmproxy may still
        listen, take a connection and print asyncio's complaints at its exit after it)."""
        out = self.output_text()
        return out if len(out) <= 2 * n else f"{out[:n]}\n[...]\n{out[-n:]}"


def start_together(procs: Iterable[ProxyProcess]) -> None:
    """Launch every process, then wait for each: their warm-ups overlap instead of adding up (all are
    stopped if one fails to start)."""
    procs = list(procs)
    for p in procs:
        p.launch()
    try:
        for p in procs:
            p.wait_ready()
    except BaseException:
        stop_together(procs)
        raise


def stop_together(procs: Iterable[ProxyProcess], timeout: float = 15.0) -> None:
    """``stop`` for several processes: every one is interrupted first, so their shutdowns overlap."""
    procs = list(procs)
    for p in procs:
        p.interrupt()
    for p in procs:
        p.wait_stopped(timeout)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def files_holding(root: Path, needle: bytes) -> list[str]:
    """The files under ``root`` (relative paths) whose bytes hold ``needle``; a file gone since it was listed (a
    database's journal, written and removed while the proxy runs) holds nothing."""
    return [str(p.relative_to(root)) for p in root.rglob("*") if needle in _bytes_of(p)]


def _bytes_of(path: Path) -> bytes:
    try:
        return path.read_bytes() if path.is_file() else b""
    except FileNotFoundError:
        return b""
