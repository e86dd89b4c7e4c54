"""Where the TUI's events come from: the live proxy or a recorded log (tests feed it from memory:
``tests/tui/events.py``).

Every source has the same interface: ``run(post)`` posts :mod:`contextwarden.tui.messages` until
cancelled, and ``command(dict)`` sends a command to the proxy and returns its result (or raises
:class:`CommandError`).

:class:`LiveClient` reads ``cw_home/tui.json`` (port, token, pid) before every attempt, so it finds a
restarted proxy on its new port, and retries with exponential backoff while the proxy is away.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from contextwarden.core.events import read_log
from contextwarden.core.liveprotocol import INFO_FILE, TOKEN_HEADER

from .messages import ConnectionChanged, EventsDropped, EventsReceived, SnapshotReceived

Post = Callable[[Any], Any]


class CommandError(Exception):
    pass


@dataclass
class ConnectionInfo:
    host: str
    port: int
    token: str
    pid: int | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

    @classmethod
    def read(cls, home: Path) -> ConnectionInfo | None:
        """The proxy's connection file, or None if it is missing, unreadable or its process is gone."""
        try:
            d = orjson.loads((Path(home) / INFO_FILE).read_bytes())
            if d.get("pid"):
                os.kill(int(d["pid"]), 0)
            return cls(host=d["host"], port=int(d["port"]), token=d["token"], pid=d.get("pid"))
        except (OSError, ValueError, KeyError, TypeError):
            return None


class Source:
    """Base of the event sources: ``command`` refuses with ``REFUSAL``."""

    live = False
    description = ""
    REFUSAL = "not connected to a proxy: commands need a live proxy"

    async def run(self, post: Post) -> None:
        raise NotImplementedError

    async def command(self, cmd: dict[str, Any], timeout: float = 30) -> Any:
        raise CommandError(self.REFUSAL)


class LiveClient(Source):
    live = True

    def __init__(self, home: Path, *, min_delay: float = 0.25, max_delay: float = 5.0) -> None:
        self.home = Path(home)
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.description = str(self.home)
        self.attempts = 0
        self.connections = 0
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}

    async def run(self, post: Post) -> None:
        delay = self.min_delay
        while True:
            info = ConnectionInfo.read(self.home)
            if info is None:
                post(ConnectionChanged("waiting", f"no running proxy found ({self.home / INFO_FILE})"))
            else:
                self.attempts += 1
                post(ConnectionChanged("connecting", f"{info.host}:{info.port}"))
                try:
                    async with connect(info.url, additional_headers={TOKEN_HEADER: info.token}, proxy=None,
                                       max_size=None, compression=None, open_timeout=5,
                                       ping_interval=20, ping_timeout=60) as ws:
                        self._ws = ws
                        self.connections += 1
                        delay = self.min_delay
                        post(ConnectionChanged("connected", f"{info.host}:{info.port}"))
                        async for raw in ws:
                            self._dispatch(orjson.loads(raw), post)
                    post(ConnectionChanged("disconnected", "the proxy closed the connection"))
                except asyncio.CancelledError:
                    raise
                except InvalidStatus as e:
                    code = e.response.status_code
                    post(ConnectionChanged("refused", f"HTTP {code}: token not accepted" if code == 401 else f"HTTP {code}"))
                except Exception as e:  # OSError, ConnectionClosed, TimeoutError, bad JSON...
                    post(ConnectionChanged("disconnected", f"{type(e).__name__}: {e}" if str(e) else type(e).__name__))
                finally:
                    self._ws = None
                    for fut in self._waiting.values():
                        if not fut.done():
                            fut.set_exception(CommandError("connection lost"))
                    self._waiting.clear()
            await asyncio.sleep(delay)
            delay = min(self.max_delay, delay * 2)

    def _dispatch(self, msg: dict[str, Any], post: Post) -> None:
        kind = msg.get("kind")
        if kind == "events":
            extra = {k: v for k, v in msg.items() if k not in ("kind", "events")}
            post(EventsReceived(msg.get("events") or [], extra))
        elif kind == "snapshot":
            post(SnapshotReceived(msg))
        elif kind == "dropped":
            post(EventsDropped(int(msg.get("events") or 0), msg.get("totals")))
        elif kind == "reply":
            fut = self._waiting.pop(int(msg.get("id") or 0), None)
            if fut is not None and not fut.done():
                if msg.get("ok"):
                    fut.set_result(msg.get("result"))
                else:
                    fut.set_exception(CommandError(msg.get("error") or "command failed"))

    async def command(self, cmd: dict[str, Any], timeout: float = 30) -> Any:
        ws = self._ws
        if ws is None:
            raise CommandError("not connected to the proxy")
        rid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        try:
            await ws.send(orjson.dumps({**cmd, "id": rid}).decode())
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise CommandError(f"no answer to {cmd.get('cmd')} in {timeout:.0f} s") from None
        except CommandError:
            raise
        except Exception as e:
            raise CommandError(f"{type(e).__name__}: {e}") from None
        finally:
            self._waiting.pop(rid, None)


class LogSource(Source):
    """A recorded ``events.jsonl``, read once, offline: nothing can be changed."""

    REFUSAL = "offline log: settings, bypass and request bodies need a live proxy"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.description = str(self.path)

    async def run(self, post: Post) -> None:
        try:
            events = await asyncio.to_thread(read_log, self.path)
        except OSError as e:
            post(ConnectionChanged("offline", f"cannot read {self.path}: {e}"))
            return
        post(SnapshotReceived({"kind": "snapshot", "offline": True, "events": [e.to_dict() for e in events]}))
        post(ConnectionChanged("offline", f"{self.path} ({len(events)} events)"))
