"""The engine starting itself again in place (``pipeline.recycle``): CPython never gives a fragmented heap
back to the system, so after a load the engine's RSS stays high however idle it is; a fresh interpreter
starts small.

After the runtime's idle forget, when the engine served a request since it started and its RSS is
``pipeline.recycle_mb`` over its start-up RSS, it asks the link (``recycle``). The link agrees only with
nothing in flight, and from then holds what it would send until the new engine's ``ready``. The engine
closes its runtime (the memory process detached, not stopped; state and log written), writes what must
outlive it (:class:`Carried`) to a memfd and ``os.execv``s itself: the same pid, so the link's socket
pair, its rings and the memory process (still this pid's child) stay as they are.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

from ..core import frames


@dataclass
class Carried:
    """What the engine after its exec starts from."""

    options: dict[str, Any]  # the start's (mitmdump's options by name)
    listening: bool  # mitmdump listens: the new engine's servers publish their discovery files at once
    overrides: dict[str, Any]  # settings changed at run time (the CLI, the TUI)
    events: list[dict[str, Any]]  # the recent events the TUI reads (Event.to_dict), oldest first
    server: dict[str, Any] | None  # the event server's port, token, start and totals (EventService.carry)
    memory: tuple[int, int, str] | None  # the memory process kept: pid, restarts, socket (memory.client.ATTACH_ENV)
    ring_head: int  # where the engine's writer to the link's ring is
    execs: int  # how many times this engine exec'd itself
    started: float  # when the first of them started (time.time())
    rss_mb: float  # its RSS before this exec
    at: float  # when it exec'd (time.time())


def exec_engine(sock: socket.socket, rings: tuple[frames.Ring, frames.Ring], carried: Carried) -> NoReturn:
    """This process becomes a new engine (``python -m contextwarden.engine FD IN OUT CARRIED``)."""
    fd = os.memfd_create("contextwarden-carried", 0)  # (no MFD_CLOEXEC: kept across the exec)
    with open(fd, "wb", closefd=False) as f:
        pickle.dump(carried, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.lseek(fd, 0, os.SEEK_SET)
    fds = [sock.fileno(), rings[0].fd, rings[1].fd, fd]
    for n in fds:
        os.set_inheritable(n, True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "contextwarden.engine", *map(str, fds)])


def load(fd: int) -> Carried:
    with open(fd, "rb") as f:
        return pickle.load(f)
