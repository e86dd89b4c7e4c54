"""The proxy's side of the memory process: starts it, talks to it, restarts it when it dies.

:class:`RemoteMemoryService` stands where :class:`~contextwarden.memory.service.MemoryService` stands
(``service.get_service(runtime)``) and behaves the same for its callers: ``ready``, ``available``,
``error``, ``wait_ready``, ``update``, ``close`` are its own; every other public method of the service
class is called BY NAME on the service in the memory process (a method added to MemoryService works here
unchanged; frames: :mod:`contextwarden.memory.wire`). Events the service emits come back over the socket
onto the runtime's bus.

Fail open, with the budgets of the in-process service: ``search`` waits ``timeout_s`` (plus the socket
hop) and raises TimeoutError; ``submit`` sends and does not wait (False only when the process is not
there: the memory stage then leaves its ingestion marker where it was, and the next turn sends the
items again); while the process is starting or restarting, ``ready`` is clear and requests go without
memory.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import suppress
from pathlib import Path

from ..core.events import Event
from . import wire

CALL_WAIT_S = 30.0
SEARCH_MARGIN_S = 0.05  # the socket hop and decoding, on top of the search's own budget
START_WAIT_S = 120.0
# set by an engine that starts itself again in place (``contextwarden.engine.recycle``): "PID RESTARTS PATH" of
# the memory process it kept, which the next client attaches to instead of starting one
ATTACH_ENV = "CW_MEMORY_ATTACH"  # (not CONTEXTWARDEN_: the settings read those)
_names = itertools.count(1)


class NullTagger:
    """The proxy does not tag for memory: items go untagged and the memory process tags them."""

    settings = None

    def tag(self, text: str) -> list[str]:
        return []


def socket_path(home: Path) -> Path:
    """A socket path under cw_home/run, unless that is too long for AF_UNIX (then a private temp dir)."""
    name = f"memory-{os.getpid()}-{next(_names)}.sock"
    p = Path(home) / "run" / name
    if len(str(p).encode()) < 100:
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return p
    return Path(tempfile.mkdtemp(prefix="cw-mem-")) / name


def store_key(settings) -> tuple:
    """What a memory service is opened with: settings that differ here need a new service."""
    m = settings.memory
    return (m.chroma_url, m.model_dir, m.chunk_tokens)


class RemoteMemoryService:
    def __init__(self, runtime, service_class: type) -> None:
        self.runtime = runtime
        self._service_class = service_class  # whose methods are called by name (its values stay there)
        self.bus = runtime.bus
        self.home = Path(runtime.home)
        self.settings = runtime.settings
        self.separate = True
        self._key = store_key(self.settings)
        self.tagger = NullTagger()
        self.ready = threading.Event()
        self.error: str | None = None
        self.closed = False
        self.detached = False
        self._reaped: int | None = None  # the exit status of a process attached to, once waited for
        self.restarts = 0
        self.pid: int | None = None
        self._state: dict = {}
        self._sock: socket.socket | None = None
        self._outbox: wire.Outbox | None = None  # frames to the socket, written by a thread of its own
        self._calls: dict[int, Future] = {}
        self._calls_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._proc: subprocess.Popen | None = None
        self._path = socket_path(self.home)
        attach = os.environ.pop(ATTACH_ENV, "").split(" ", 2)
        if len(attach) == 3:  # the process an engine's earlier self started: attached to, not started
            self.pid, self.restarts, self._path = int(attach[0]), int(attach[1]), Path(attach[2])
        self._thread = threading.Thread(target=self._supervise, name="cw-memory-client", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"RemoteMemoryService(pid={self.pid}, ready={self.ready.is_set()})"

    # --- the process --------------------------------------------------------------------------------
    def _spawn(self) -> None:
        self._reaped = None
        log_dir = self.home / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log = open(log_dir / "memory-server.log", "ab")
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])  # the contextwarden package's own folder first
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._path.unlink(missing_ok=True)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "contextwarden.memory.server", "--home", str(self.home),
             "--socket", str(self._path), "--parent-pid", str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True)
        log.close()
        self.pid = self._proc.pid

    def _connect(self) -> None:
        deadline = time.monotonic() + START_WAIT_S
        while True:
            if self.closed:
                raise ConnectionError("closed")
            if (code := self._exit()) is not None:
                raise ConnectionError(f"memory process exited with {code}")
            if self._path.exists():
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(str(self._path))
                    break
                except OSError:
                    s.close()
            if time.monotonic() > deadline:
                raise ConnectionError("memory process did not open its socket")
            time.sleep(0.05)
        with suppress(OSError):  # room for a turn's frames without a wait for the memory process to read them
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self._outbox = wire.Outbox(s)
        self._sock = s
        threading.Thread(target=self._read, args=(s,), name="cw-memory-reader", daemon=True).start()

    def _read(self, s) -> None:
        try:
            while True:
                msg = wire.recv_frame(s)
                if msg is None:
                    break
                ev = msg.get("ev")
                if ev is not None:
                    data = ev.get("data") or {}
                    if ev.get("type") == "memory_status":
                        self._on_status(data)
                        data = {**data, "socket": str(self._path)}  # (a private temp dir when cw_home's is too long)
                    self.bus.publish(Event(type=ev["type"], data=data, flow_id=ev.get("flow_id"),
                                           session=ev.get("session"), ts=ev.get("ts") or time.time()))
                    continue
                with self._calls_lock:
                    fut = self._calls.pop(msg.get("id"), None)
                if fut is None or fut.done():
                    continue
                if "e" in msg:
                    fut.set_exception(wire.decode_error(msg["e"]))
                else:
                    fut.set_result(msg.get("r"))
        except (OSError, ValueError):
            pass
        finally:
            self._lost(s)

    def _on_status(self, data: dict) -> None:
        self._state.update(available=data.get("status") == "ready", error=data.get("error"))
        self.error = data.get("error")

    def _lost(self, s) -> None:
        """The connection is gone: calls waiting on it fail at once (the caller goes without memory)."""
        if self._sock is s:
            self.ready.clear()
            self._sock = None
        ob = self._outbox
        if ob is not None and ob.sock is s:
            ob.close()
        with self._calls_lock:
            calls, self._calls = self._calls, {}
        for f in calls.values():
            if not f.done():
                f.set_exception(ConnectionError("memory process connection lost"))
        with suppress(OSError):
            s.close()

    def _exit(self) -> int | None:
        """The memory process's exit status; None while it runs. One attached to (started by this process
        before it exec'd itself: still its child, but no Popen's) is waited for by its pid."""
        if self._proc is not None:
            return self._proc.poll()
        if self.pid is None or self._reaped is not None:
            return self._reaped
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # not a child of this process: alive while it can be signalled
            try:
                os.kill(self.pid, 0)
                return None
            except ProcessLookupError:
                self._reaped = -1
            except PermissionError:
                pass
            return self._reaped
        if pid:
            self._reaped = os.waitstatus_to_exitcode(status)
        return self._reaped

    def detach(self) -> tuple[int, int, str]:
        """Let go of the memory process without stopping it (this process is about to exec itself): its
        (pid, restarts, socket path), for ``ATTACH_ENV``."""
        self.closed = self.detached = True
        if self._sock is not None:
            self._lost(self._sock)
        return self.pid or 0, self.restarts, str(self._path)

    def _supervise(self) -> None:
        backoff = 0.5
        while not self.closed:
            started = time.monotonic()
            try:
                if self._proc is not None or self.pid is None or self._exit() is not None:
                    self._spawn()  # (else: attach to the one running)
                self._connect()
                self._op("events")
                self._op("open", settings=self.settings)
                while not self.closed:
                    try:  # the model loads for a while; a busy machine answers late: ask again
                        self._state = self.call("state", 1.0, _wait=5.0)
                        if self._state["ready"]:
                            break
                    except TimeoutError:
                        if self._proc is not None and self._proc.poll() is not None:
                            raise
                self.error = self._state.get("error")
                if not self.closed:
                    self.ready.set()
                    self.bus.emit("memory_process", {"pid": self.pid, "restarts": self.restarts,
                                                     "ms": round((time.monotonic() - started) * 1000, 1)})
            except Exception as e:
                if not self.closed:
                    self.error = f"{type(e).__name__}: {e}"
                    self.bus.emit("error", {"where": "memory.process", "message": self.error,
                                            "action": "requests go without memory; restarting it"})
            while self._exit() is None and not self.closed:
                time.sleep(0.2)
            if self.closed:
                return
            self.ready.clear()
            if self._sock is not None:
                self._lost(self._sock)
            self.restarts += 1
            if time.monotonic() - started > 60:
                backoff = 0.5
            self.bus.emit("memory_status", {"status": "restarting", "exit": self._exit(),
                                            "restarts": self.restarts, "in_s": backoff})
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    # --- calls --------------------------------------------------------------------------------------
    def _op(self, op: str, wait: float = CALL_WAIT_S, **fields):
        s = self._sock
        if s is None:
            raise ConnectionError("memory process not connected")
        rid = next(self._ids)
        fut: Future = Future()
        with self._calls_lock:
            self._calls[rid] = fut
        try:
            self._send(s, {"id": rid, "op": op, **fields})
        except OSError as e:
            with self._calls_lock:
                self._calls.pop(rid, None)
            raise ConnectionError(f"memory process: {e}") from None
        try:
            return fut.result(wait)
        except FutureTimeout:
            with self._calls_lock:
                self._calls.pop(rid, None)
            raise TimeoutError(f"memory process did not answer {op} in {wait:.2f} s") from None

    def _send(self, s, frame: dict) -> None:
        """``frame`` queued for socket ``s`` (written in order by the outbox's thread); OSError when it
        cannot be: the connection is gone, or past the outbox's bound (the memory process reads nothing)."""
        ob = self._outbox
        if ob is None or ob.sock is not s:
            raise OSError("memory process not connected")
        if not ob.put(frame):
            raise OSError(f"memory process: {ob.queued} bytes wait to be written")

    def _call_fields(self, name: str, args: tuple, kwargs: dict) -> dict:
        """A call frame's fields: ``name(*args, **kwargs)``."""
        if kwargs.get("settings") is self.settings:  # the memory process has them (open, update)
            del kwargs["settings"]
        return {"m": name, "a": args, "k": kwargs}

    def call(self, name: str, *args, _wait: float = CALL_WAIT_S, **kwargs):
        """``name(*args, **kwargs)`` on the service in the memory process (TypeError before anything is
        sent when an argument cannot be)."""
        return self._op("call", wait=_wait, **self._call_fields(name, args, kwargs))

    def __getattr__(self, name: str):
        if name.startswith("_") or not callable(getattr(self._service_class, name, None)):
            raise AttributeError(name)
        return lambda *a, **k: self.call(name, *a, **k)

    # --- the service's own surface ------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return (self.ready.is_set() and self._sock is not None and not self.closed
                and bool(self._state.get("available")))

    @property
    def lexical_ready(self) -> bool:
        try:
            return bool(self.call("state", _wait=2.0)["lexical_ready"])
        except (ConnectionError, TimeoutError):
            return False

    def wait_ready(self, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        if not self.ready.wait(timeout):
            return False
        try:
            return bool(self.call("wait_ready", max(0.0, deadline - time.monotonic()),
                                  _wait=max(0.0, deadline - time.monotonic()) + 5))
        except (ConnectionError, TimeoutError):
            return False

    def search(self, query, tenants, *, timeout_s: float | None = None, **kw):
        wait = CALL_WAIT_S if timeout_s is None else timeout_s + SEARCH_MARGIN_S
        return self.call("search", query, tenants, timeout_s=timeout_s, _wait=wait, **kw)

    def _cast(self, name: str, *args, **kwargs) -> bool:
        """``name(*args, **kwargs)`` sent to the memory process without waiting for its answer: True once
        queued. Waiting made the request (or the turn's work) as slow as the memory process under load.
        The memory process takes ``keep`` and ``prepare`` in the order sent, before any later call on this
        connection (a recall of the kept ids, the search that names the prepared token)."""
        s = self._sock
        if not self.available or s is None:
            return False
        try:
            self._send(s, {"id": 0, "op": "call", **self._call_fields(name, args, kwargs)})
        except OSError:
            return False
        return True

    def prepare(self, token: str, query, tenants, **kw) -> bool:
        """Start the vector half of a search (``MemoryService.prepare``): it runs while the stages do."""
        return self._cast("prepare", token, query, tenants, **kw)

    def submit(self, items, **info) -> bool:
        """Hand items to the memory process (it stores them in its pending table, redacted). False only
        when it is not there: the next turn sends them again."""
        return self._cast("submit", items, **info)

    def keep(self, items, searchable: bool = True) -> list[str]:
        """Hand originals to the memory process: their ids are known here (what ``MemoryService.keep``
        returns)."""
        todo = [it for it in items if it.text and it.text.strip()]
        if not todo or not self._cast("keep", todo, searchable=searchable):
            return []
        return [it.source_id or it.memory_id for it in todo]

    def flush(self, timeout: float = 120) -> bool:
        if self._sock is None:
            return False
        return bool(self.call("flush", timeout, _wait=timeout + 5))

    def update(self, settings) -> bool:
        """New settings, applied in place (sent to the memory process); False when the store itself
        changes (the caller replaces the service)."""
        if store_key(settings) != self._key:
            return False
        self.settings = settings
        with suppress(Exception):  # (else applied at the next restart: it opens with self.settings)
            self.call("update", settings, _wait=5.0)
        return True

    def close(self, timeout: float | None = None) -> None:
        """Ask the process to close (it flushes ``memory.shutdown_flush_s``, leaves the rest pending),
        then wait for it; terminate, then kill, what does not exit. Nothing once detached."""
        if self.detached:
            return
        self.closed = True
        t0 = time.monotonic()
        flush = float(getattr(self.settings.memory, "shutdown_flush_s", 3.0))
        budget = timeout if timeout is not None else flush + 5.0
        deadline = time.monotonic() + budget
        with suppress(Exception):
            if self._sock is not None:
                self._op("close", wait=budget)
        proc = self._proc
        while proc is None and self._exit() is None and time.monotonic() < deadline:  # (attached to)
            time.sleep(0.05)
        if proc is not None:  # asked, then terminated, then killed; a close never raises (a slow reap is left)
            for stop, wait in ((None, max(0.1, deadline - time.monotonic())), (proc.terminate, 2.0), (proc.kill, 10.0)):
                if stop is not None:
                    stop()
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    pass
        if self._sock is not None:
            self._lost(self._sock)
        self.ready.clear()
        with suppress(OSError):
            os.unlink(self._path)
        self.bus.emit("memory_process", {"pid": self.pid, "stopped": True, "exit": self._exit(),
                                         "ms": round((time.monotonic() - t0) * 1000, 1)})
