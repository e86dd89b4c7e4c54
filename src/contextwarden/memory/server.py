"""The memory process: one :class:`~contextwarden.memory.service.MemoryService` behind a Unix socket.

``python -m contextwarden.memory.server --home DIR --socket PATH [--parent-pid N]``

The proxy starts it (see :mod:`contextwarden.memory.client`), so that embedding, the lexical index,
Chroma, tagging for memory and ingestion never hold the proxy's interpreter lock. It calls any public
method of the service by name (frames: :mod:`contextwarden.memory.wire`), forwards the events the
service emits to every connection that asked for them, and exits when asked to close, on SIGTERM, or
when the process that started it is gone. The socket file is created with mode 0600.

Frames in: ``{"id", "op": "open"|"call"|"close"|"events", ...}`` (a call: ``m``, ``a``, ``k``);
frames out: ``{"id", "r": result}`` or ``{"id", "e": {"type", "message"}}``, and ``{"ev": event}``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any

from ..core.events import EventBus
from . import wire
from .service import MemoryService

# calls answered on the connection's own thread, in the order they came: a queue append each
# (``keep``: a recall of the kept ids, sent after it, must find them pending; ``prepare``: the search
# that names its token, sent after it, must find it, and it only starts the vector half in the pool)
INLINE = frozenset({"keep", "prepare"})
# calls that feed ingestion (redacting texts into the pending table and indexing them by their words):
# one thread takes them in the order they came, instead of up to 8 pool threads holding the interpreter
# lock while a request's search waits for it; not niced (a turn is searchable by its words within 2 s
# under load: issue 40), its embedding waits for the storer
BACKGROUND = frozenset({"submit"})
# calls that see every ingestion call sent before them done first (``flush``: "everything submitted so far")
AFTER_BACKGROUND = frozenset({"flush"})


class MemoryServer:
    def __init__(self, home: str | Path, sock_path: str | Path, parent_pid: int | None = None) -> None:
        self.home = Path(home)
        self.sock_path = str(sock_path)
        self.bus = EventBus(recent=16)
        self.settings: Any = None  # the first client's (open); with home and bus, what the service reads
        self.service: MemoryService | None = None
        self.parent_pid = parent_pid
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, tuple[threading.Lock, bool]] = {}
        self._conns_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="cw-memsrv")
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cw-memsrv-ingest")
        self._stop = threading.Event()
        self._closed = threading.Event()
        self.bus.subscribe(self._forward)

    # --- the service ------------------------------------------------------------------------------
    def _open(self, settings):
        with self._lock:
            if self.service is None:
                self.settings = settings
                self.service = MemoryService(self, background=True, separate=True)
            return self.service

    def close(self) -> None:
        """Close the service once (flushes what fits in ``memory.shutdown_flush_s``)."""
        with self._lock:
            svc, self.service = self.service, None
        if svc is not None:
            t0 = time.monotonic()
            try:
                svc.close()
            except Exception as e:
                print(f"contextwarden memory: close failed: {type(e).__name__}: {e}", file=sys.stderr)
            print(f"contextwarden memory: service closed in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        self._closed.set()
        self._stop.set()

    def _forward(self, ev) -> None:
        frame = {"ev": ev.to_dict()}
        with self._conns_lock:
            conns = [(c, lk) for c, (lk, wants) in self._conns.items() if wants]
        for c, lk in conns:
            try:
                wire.send_frame(c, frame, lk)
            except (OSError, TypeError):
                pass

    # --- requests ---------------------------------------------------------------------------------
    def _handle(self, msg: dict):
        op = msg.get("op")
        if op == "open":
            self._open(msg["settings"])
            return True
        if op == "close":
            self.close()
            return True
        svc = self.service
        if svc is None:
            raise RuntimeError("memory service not open")
        if op != "call":
            raise ValueError(f"unknown op {op!r}")
        name = msg.get("m", "")
        if name.startswith("_"):
            raise AttributeError(f"{name} is private")
        return getattr(svc, name)(*msg.get("a", ()), **msg.get("k", {}))

    def _serve_call(self, conn: socket.socket, lk: threading.Lock, msg: dict, after: Future | None = None) -> None:
        try:
            if after is not None:
                after.result()
            out = {"id": msg.get("id"), "r": self._handle(msg)}
        except BaseException as e:
            out = {"id": msg.get("id"), "e": wire.encode_error(e)}
        try:
            wire.send_frame(conn, out, lk)
        except (OSError, TypeError) as e:
            with suppress(OSError):
                wire.send_frame(conn, {"id": msg.get("id"), "e": wire.encode_error(e)}, lk)

    def _serve_conn(self, conn: socket.socket) -> None:
        lk = threading.Lock()
        with self._conns_lock:
            self._conns[conn] = (lk, False)
        try:
            while True:
                msg = wire.recv_frame(conn)
                if msg is None:
                    break
                if msg.get("op") == "events":
                    with self._conns_lock:
                        self._conns[conn] = (lk, True)
                    wire.send_frame(conn, {"id": msg.get("id"), "r": True}, lk)
                    continue
                if msg.get("op") == "close":
                    # the calls sent before it (submits the proxy did not wait for) are done first
                    t0 = time.monotonic()
                    self._background.shutdown(wait=True)
                    self._pool.shutdown(wait=True)
                    print(f"contextwarden memory: calls sent before close done in {time.monotonic() - t0:.1f} s",
                          file=sys.stderr)
                    self._serve_call(conn, lk, msg)  # in this thread: the reply goes once closed
                    break
                if msg.get("op") == "call" and msg.get("m") in INLINE:
                    self._serve_call(conn, lk, msg)  # cheap, and in the order sent (before any later call)
                    continue
                pool = self._background if msg.get("op") == "call" and msg.get("m") in BACKGROUND else self._pool
                try:
                    # (the ingestion thread takes its calls in order: a no-op queued now is done once those sent
                    # before this call are)
                    after = self._background.submit(int) if msg.get("m") in AFTER_BACKGROUND else None
                    pool.submit(self._serve_call, conn, lk, msg, after)
                except RuntimeError:
                    break
        except (OSError, ValueError):
            pass
        finally:
            with self._conns_lock:
                self._conns.pop(conn, None)
            with suppress(OSError):
                conn.close()

    def _watch_parent(self) -> None:
        while not self._stop.wait(1.0):
            if self.parent_pid is None:
                continue
            try:
                os.kill(self.parent_pid, 0)
            except ProcessLookupError:
                self.close()
                return
            except PermissionError:
                pass
            if os.getppid() != self.parent_pid and os.getppid() == 1:
                self.close()
                return

    def serve(self) -> None:
        Path(self.sock_path).unlink(missing_ok=True)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            srv.bind(self.sock_path)
        finally:
            os.umask(old)
        os.chmod(self.sock_path, 0o600)
        srv.listen(16)
        srv.settimeout(0.5)
        threading.Thread(target=self._watch_parent, name="cw-memsrv-parent", daemon=True).start()
        try:
            while not self._stop.is_set():
                try:
                    conn, _ = srv.accept()
                except TimeoutError:
                    continue
                conn.settimeout(None)
                threading.Thread(target=self._serve_conn, args=(conn,), name="cw-memsrv-conn", daemon=True).start()
        finally:
            srv.close()
            with suppress(OSError):
                os.unlink(self.sock_path)
        self._closed.wait(60)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m contextwarden.memory.server")
    ap.add_argument("--home", required=True)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--parent-pid", type=int, default=None)
    args = ap.parse_args(argv)
    server = MemoryServer(args.home, args.socket, parent_pid=args.parent_pid)

    def on_term(signum, frame) -> None:
        threading.Thread(target=server.close, name="cw-memsrv-term", daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    t0 = time.monotonic()
    server.serve()
    print(f"contextwarden memory: stopped after {time.monotonic() - t0:.1f} s", file=sys.stderr)
    sys.stderr.flush()
    os._exit(0)  # Chroma and ONNX Runtime threads must not hold the exit


if __name__ == "__main__":
    sys.exit(main())
