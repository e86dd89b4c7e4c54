"""Synthetic events shaped like the proxy's, and a source that feeds them to the TUI: for tests and snapshots."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from contextwarden.settings import Settings, _deep_merge
from contextwarden.tui.client import CommandError, Post, Source
from contextwarden.tui.messages import ConnectionChanged, EventsReceived, SnapshotReceived

STAGES = ["budget", "strip", "tagging", "clearing", "compaction", "memory"]


class EventFactory:
    """Builds the event sequence of requests, with deterministic sequence numbers and times."""

    def __init__(self, t0: float = 1_700_000_000.0, seq: int = 1) -> None:
        self.t = t0
        self._seq = itertools.count(seq)
        self._flow = itertools.count(1)

    def ev(self, type: str, data: dict[str, Any] | None = None, flow_id: str | None = None,
           session: str | None = None, dt: float = 0.001) -> dict[str, Any]:
        self.t += dt
        return {"seq": next(self._seq), "ts": round(self.t, 3), "type": type, "flow_id": flow_id,
                "session": session, "data": data or {}}

    def startup(self, profile: str = "default") -> dict[str, Any]:
        return self.ev("startup", {"profile": profile, "mode": "active", "home": "/tmp/cw", "stages": STAGES})

    def request(self, session: str = "sess-a", *, tokens_in: int = 12_000, tokens_sent: int | None = None,
                tags: list[str] | None = None, mem_tokens: int = 0, stage_ms: dict[str, float] | None = None,
                upstream_ms: float = 850.0, status: int = 200, level: str | None = None,
                compaction: dict[str, Any] | None = None, clearing: dict[str, Any] | None = None,
                usage: dict[str, int] | None = None, mode: str = "active", model: str = "claude-sonnet-4-5",
                gap: float = 1.0) -> list[dict[str, Any]]:
        """Every event one request produces, in the order the proxy emits them."""
        fid = f"flow-{next(self._flow):04d}"
        sent = tokens_in + mem_tokens if tokens_sent is None else tokens_sent  # memory goes out with the request
        out = [self.ev("request", {"api": "anthropic", "host": "api.anthropic.com", "path": "/v1/messages",
                                   "model": model, "tenant": "t-1", "agent": "main", "session_source": "metadata.user_id",
                                   "messages": 12, "stream": True, "bytes": tokens_in * 4, "tokens_in": tokens_in,
                                   "mode": mode, "headers": [["x-api-key", "[REDACTED:header]"], ["content-type", "application/json"]]},
                       fid, session, dt=gap)]
        ms = stage_ms if stage_ms is not None else ({s: 0.5 for s in STAGES} if mode == "active" else {})
        for name, v in ms.items():
            if name == "budget" and level:
                out.append(self.ev("budget", {"level": level, "used": tokens_in, "limit": 100_000}, fid, session))
            if name == "tagging" and tags is not None:
                out.append(self.ev("tags", {"tags": tags}, fid, session))
            if name == "clearing" and clearing:
                out.append(self.ev("clearing", clearing, fid, session))
            if name == "compaction" and compaction:
                out.append(self.ev("compaction", compaction, fid, session))
            if name == "memory" and mem_tokens:
                out.append(self.ev("memory", {"injected": 2, "tokens": mem_tokens, "ids": ["m1", "m2"], "ms": 3.0}, fid, session))
            out.append(self.ev("stage", {"stage": name, "ms": v, "status": "ok", "error": None}, fid, session))
        out.append(self.ev("forward", {"changed": sent != tokens_in, "reason": "rewritten" if sent != tokens_in else "unchanged",
                                       "bytes_in": tokens_in * 4, "bytes_out": sent * 4, "tokens_in": tokens_in,
                                       "tokens_out": sent, "pipeline_ms": round(sum(ms.values()), 3),
                                       "stages": [{"stage": k, "ms": v, "status": "ok"} for k, v in ms.items()]}, fid, session))
        u = usage if usage is not None else {"input_tokens": 40, "output_tokens": 300, "cache_read_input_tokens": max(0, sent - 1040),
                                             "cache_creation_input_tokens": 1000}
        summary = {"model": model, "stop_reason": "end_turn", "usage": u, "text_chars": 900, "tool_calls": [], "error": None}
        out.append(self.ev("response", {"api": "anthropic", "status": status, "upstream_ms": upstream_ms,
                                        "total_ms": upstream_ms + 5, "error": None, "streamed": True, **summary},
                           fid, session, dt=upstream_ms / 1000))
        out.append(self.ev("turn", {**summary, "tags": tags, "tokens_in": tokens_in, "tokens_sent": sent}, fid, session))
        return out

    def ingest(self, session: str, turn: int, tags: list[str], tokens: int = 800) -> dict[str, Any]:
        return self.ev("ingest", {"history": True, "turn": turn, "tags": tags, "tokens": tokens, "items": 3}, None, session)


def demo_events(n: int = 12) -> list[dict[str, Any]]:
    """A small, varied, deterministic session history (used by the snapshot tests)."""
    f = EventFactory()
    evs = [f.startup()]
    evs.append(f.ingest("sess-a", 1, ["setup", "python"]))
    evs.append(f.ingest("sess-a", 2, ["python", "tests"]))
    tags_cycle = [["python", "tests"], ["eventserver", "websocket"], ["tui", "textual"], ["tests", "pilot"]]
    for i in range(n):
        sess = "sess-a" if i % 3 else "sess-b"
        tokens_in = 20_000 + i * 9_000
        kw: dict[str, Any] = {}
        if i == 7:
            kw["clearing"] = {"cleared": ["toolu_1", "toolu_2", "toolu_3"], "tokens_freed": 24_000, "ids": ["m9"]}
            kw["tokens_sent"] = tokens_in - 24_000 + 600  # the memory block of this request went out too
        if i == 10:
            kw["compaction"] = {"messages": 40, "tokens_before": tokens_in, "tokens_after": 48_000,
                                "summary_tokens": 2_100, "reused": False}
            kw["tokens_sent"] = 48_000
        evs += f.request(sess, tokens_in=tokens_in, tags=tags_cycle[i % 4], mem_tokens=600 if i % 4 == 3 else 0,
                         stage_ms={"budget": 0.1, "strip": 0.2, "tagging": 1.4, "clearing": 0.3 + (3 if i == 7 else 0),
                                   "compaction": 0.4 + (12 if i == 10 else 0), "memory": 4.5},
                         level="REDUCED" if i == 11 else None, upstream_ms=700 + 37 * i, **kw)
    return evs


# What the TUI shows of the settings, pinned so pictures of the demo do not change with the profiles.
PINNED_SETTINGS = {
    "name": "default",
    "proxy": {"observe_only": False},
    "pipeline": {"order": STAGES, "disabled": [], "stage_budget_ms": 250.0},
    "tokens": {"context_window": 200_000},
    "compaction": {"soft_threshold": 0.7, "hard_threshold": 0.85, "target": 0.4, "protect_recent_turns": 4},
    "clearing": {"trigger_tokens": 100_000, "keep_recent": 6, "clear_at_least": 20_000},
    "memory": {"budget_fraction": 0.05, "top_k": 8, "inject": True},
}


def demo_snapshot(n: int = 12, bypass: list[str] | None = None) -> dict[str, Any]:
    """A server snapshot around :func:`demo_events`, with settings valid for the current code."""
    settings = Settings(**_deep_merge(Settings().model_dump(), PINNED_SETTINGS)).model_dump(mode="json")
    evs = demo_events(n)
    return {"kind": "snapshot", "protocol": 1, "pid": 1, "home": "/tmp/cw", "server_started": evs[0]["ts"],
            "runtime_started": evs[0]["ts"], "events": evs, "settings": settings, "overrides": {},
            "bypass": bypass or [], "stages": STAGES, "available_stages": STAGES, "profile": "default"}


class MemorySource(Source):
    """Events fed from code: for tests and demos. ``handler(cmd)`` answers commands (default: refuse)."""

    live = True

    def __init__(self, snapshot: dict[str, Any] | None = None, handler: Callable[[dict], Any] | None = None) -> None:
        self._snapshot = snapshot
        self.handler = handler
        self.commands: list[dict[str, Any]] = []
        self.description = "memory"
        self._post: Post | None = None
        self._ready = asyncio.Event()

    async def run(self, post: Post) -> None:
        self._post = post
        if self._snapshot is not None:
            post(SnapshotReceived(self._snapshot))
        post(ConnectionChanged("connected", "memory"))
        self._ready.set()
        await asyncio.Event().wait()

    async def ready(self) -> None:
        await self._ready.wait()

    def feed(self, events: list[dict[str, Any]], **extra: Any) -> None:
        assert self._post is not None, "run() has not started"
        self._post(EventsReceived(events, extra))

    def snapshot(self, snap: dict[str, Any]) -> None:
        assert self._post is not None, "run() has not started"
        self._post(SnapshotReceived(snap))

    async def command(self, cmd: dict[str, Any], timeout: float = 30) -> Any:
        self.commands.append(cmd)
        if self.handler is None:
            raise CommandError("this source takes no commands")
        result = self.handler(cmd)
        if asyncio.iscoroutine(result):
            result = await result
        return result
