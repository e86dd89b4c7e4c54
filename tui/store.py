"""What the TUI knows: the proxy's events folded into requests, sessions, context events and totals.

Plain Python (no Textual) so it can be tested and reused on its own. Every collection is bounded, so a
TUI left open for days on a busy proxy holds a fixed amount of memory.

Rows of *ingested history* (turns the proxy found in a conversation's history and stored in memory
without having seen them live) come from ``ingest`` events, or any event whose data says
``"history": true``; they are shown dimmed.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from contextwarden.core.liveprotocol import SentLedger, Totals, applied_compaction, new_clearing, new_compaction
from contextwarden.util.lru import LRU
from contextwarden.wire.cost import Price, number, number_or_none

CONTEXT_TYPES = ("compaction", "clearing", "compression", "error", "budget", "bypass", "settings", "startup", "shutdown", "strip",
                 "session", "memory")
ROW_TYPES = ("request", "stage", "tags", "memory", "forward", "response", "turn", "budget", "clearing", "compression",
             "compaction", "error", "strip")


@dataclass(eq=False)
class RequestRow:
    flow_id: str
    ts: float
    session: str | None = None
    turn: int | None = None  # the request's number within its session
    api: str = ""
    transport: str = "http"  # or "websocket": a message of the Responses WebSocket (Codex CLI)
    model: str | None = None
    mode: str = ""
    messages: int | None = None
    tags: list[str] = field(default_factory=list)
    tokens_in: int | None = None
    tokens_sent: int | None = None
    mem_tokens: int | None = None  # memory the request sent (not what was injected into a rewrite that fell back)
    stages: dict[str, float] = field(default_factory=dict)
    stage_status: dict[str, str] = field(default_factory=dict)
    pipeline_ms: float | None = None
    upstream_ms: float | None = None
    status: int | str | None = None
    level: str | None = None
    changed: bool = False
    blocked: bool = False
    reason: str = ""
    error: str | None = None
    compacted: bool = False
    cleared: bool = False
    ingested: bool = False
    usage: dict[str, Any] | None = None
    price: Price | None = None  # the model's list price, as the turn was priced (None: not priced)
    replica: str | None = None  # the gateway replica that served it (events of several replicas)

    @property
    def provider_input(self) -> int | None:
        """Input tokens the provider reported (uncached + cache reads + cache writes): measured."""
        return usage_input(self.usage)


@dataclass(eq=False)
class SessionInfo:
    id: str
    last_ts: float
    requests: int = 0
    turns: int = 0
    model: str | None = None
    tokens_in: int | None = None  # last request, counted
    tokens_sent: int | None = None  # last request, counted
    provider_input: int | None = None  # last turn, measured
    window: int | None = None  # the context window its last request was managed against (request event)
    compactions: int = 0
    clearings: int = 0
    tokens_freed: int = 0
    mem_tokens: int = 0
    level: str | None = None
    bypass: bool = False
    recent_tags: deque = field(default_factory=lambda: deque(maxlen=8))  # tags of the last turns

    def active_tags(self) -> list[tuple[str, int]]:
        return top_tags(self.recent_tags, 8)

    def fill_tokens(self) -> tuple[int | None, bool]:
        """Tokens in the context right now and whether the figure is measured (provider) or counted."""
        if self.provider_input is not None:
            return self.provider_input, True
        return self.tokens_sent if self.tokens_sent is not None else self.tokens_in, False


@dataclass(eq=False)
class ContextEvent:
    ts: float
    type: str
    session: str | None
    summary: str
    uid: int = 0  # unique in the store (sequence numbers restart with the proxy)


def get_path(d: dict[str, Any] | None, path: str, default: Any = None) -> Any:
    """``d["a"]["b"]`` for ``"a.b"``, else ``default``."""
    cur: Any = d or {}
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def top_tags(tag_lists: Iterable[list[str]], n: int) -> list[tuple[str, int]]:
    return Counter(t for tags in tag_lists for t in tags).most_common(n)


def usage_input(usage: Any) -> int | None:
    if not isinstance(usage, dict):
        return None
    vals = [usage.get(k) for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")]
    nums = [v for v in vals if isinstance(v, (int, float))]
    return int(sum(nums)) if nums else None


def normalise_tags(value: Any) -> list[str]:
    return [t for t in value if isinstance(t, str)] if isinstance(value, list) else []


def summarise(ev: dict[str, Any]) -> str:
    """One line describing a context event, for the Events panel."""
    t, d = ev.get("type"), ev.get("data") or {}
    if t == "compaction":
        if not applied_compaction(d):
            return f"not compacted: {d.get('reason') or 'below the thresholds'}"
        before, after = number_or_none(d.get("tokens_before")), number_or_none(d.get("tokens_after"))
        s = f"{d.get('messages', '?')} msgs → summary"
        if before is not None and after is not None:
            s += f", {int(before):,} → {int(after):,} tok (−{int(before - after):,})"
        if d.get("summary_tokens") is not None:
            s += f", summary {d['summary_tokens']} tok"
        if d.get("reused"):
            s += ", reused prefix"
        elif why := {"hard": "hard threshold", "manual": "compact now",
                     "soft": "soft threshold: pays off" if d.get("warm") else "cold cache: the prompt is written anyway"}.get(str(d.get("trigger"))):
            s += f" ({why})"
        return s
    if t == "clearing":
        cleared = d.get("cleared")
        n = len(cleared) if isinstance(cleared, list) else cleared
        new = d.get("new")
        fresh = "" if new is None else (" (re-applied)" if new == 0 else f" ({new} new)")
        return f"cleared {n if n is not None else '?'} tool results{fresh}, −{int(number(d.get('tokens_freed'))):,} tok"
    if t == "compression":
        n, again = int(number(d.get("compressed"))), int(number(d.get("reapplied")))
        tools = f" ({', '.join(d.get('tools') or [])})" if d.get("tools") else ""
        if not n:  # the client sent the same request again: the same texts put back
            return f"re-applied {again} compressed tool output{'s' if again != 1 else ''}{tools}"
        return (f"compressed {n} tool output{'s' if n != 1 else ''}{tools}, −{int(number(d.get('tokens_saved'))):,} tok"
                + (f", {again} re-applied" if again else ""))
    if t == "error":
        where = d.get("where", "?") + (f"/{d['stage']}" if d.get("stage") else "")
        return f"{where}: {d.get('message', '')}" + (f" ({d['action']})" if d.get("action") else "")
    if t == "budget":
        return f"level {d.get('level')} ({d.get('used')}/{d.get('limit')})"
    if t == "bypass":
        return f"observe-only {'on' if d.get('on') else 'off'} for {d.get('session')}"
    if t == "settings":
        return f"settings changed{' (kept in runtime state)' if d.get('persisted') else ''}: {_flat(d.get('overrides'))}"
    if t == "startup":
        return f"proxy started: profile {d.get('profile')} ({d.get('mode')}), stages {', '.join(d.get('stages') or []) or 'none'}"
    if t == "shutdown":
        return "proxy stopped"
    if t == "session":  # a session control (docs/session-control.md)
        act = d.get("action")
        if act == "rollback":
            return f"rolled back to v{d.get('to')} (version v{d.get('version')})"
        if act == "pin":
            p = d.get("target") or {}
            return f"pinned {p.get('kind')}:{p.get('value')}"
        if act == "unpin":
            return f"unpinned #{', #'.join(map(str, d.get('ids') or []))}"
        if act == "compact":
            return "compact now: the next request compacts and clears"
    if t == "memory":  # a request's search: what it injected and why, or why nothing
        got = f"injected {d.get('tokens', 0):,} tokens: " if d.get("injected") else ""  # why counts the items
        return got + str(d.get("why"))
    if t == "strip":
        pats = ", ".join(f"{k}×{v}" for k, v in (d.get("patterns") or {}).items())
        return (f"stripped envelopes from {d.get('cleaned', 0)} of {d.get('messages', '?')} messages"
                + (f" ({pats})" if pats else "") + (f", {d['rewritten']} rewritten on the wire" if d.get("rewritten") else ""))
    return _flat(d)


def _worth_listing(t: str, d: dict[str, Any]) -> bool:
    """Whether a context event belongs in the Events panel: what changed a request, not every request's
    "nothing to do" (a budget at NORMAL, a strip that found no envelope, a compaction not applied)."""
    if t == "budget":
        return d.get("level") not in (None, "NORMAL", "normal")
    if t == "strip":
        return bool(d.get("cleaned") or d.get("rewritten"))
    if t == "compaction":
        return applied_compaction(d)
    if t == "memory":  # a person's message's search (not ingestion, not a tool-loop step)
        return "why" in d and d.get("skipped") not in ("tool loop step", "starting")
    return True


def _flat(d: Any, prefix: str = "") -> str:
    if not isinstance(d, dict):
        return str(d)
    return ", ".join(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else f"{prefix}{k}={v}" for k, v in d.items())


class Store:
    """Folds events into bounded views. ``apply`` returns which panels changed."""

    max_sessions = 200

    def __init__(self, max_requests: int = 500) -> None:
        self.max_requests = max_requests
        self.requests: OrderedDict[str, RequestRow] = OrderedDict()
        self.sessions: OrderedDict[str, SessionInfo] = OrderedDict()  # least recently active first
        self.context: deque[ContextEvent] = deque(maxlen=300)
        self.raw: deque[dict[str, Any]] = deque(maxlen=5000)  # for offline export
        self.totals = Totals()
        self.settings: dict[str, Any] | None = None
        self.stages: list[str] = []
        self.available_stages: list[str] = []
        self.profile: str | None = None
        self.bypass: set[str] = set()
        self.runtime_started: float | None = None
        self.dropped = 0  # events the server dropped because we read too slowly
        self.events_seen = 0
        self._seen = LRU(20_000)  # applied sequence numbers
        self._n = 0
        self._session_requests = LRU(20 * self.max_sessions)  # requests per session ever seen (turn numbers)
        self.sent = SentLedger()  # a request's freed and memory tokens, once its forward says they went out

    # -- loading ------------------------------------------------------------------------------------

    def load_snapshot(self, snap: dict[str, Any]) -> set[str]:
        """Replace everything with a server snapshot (or a whole offline log)."""
        Store.__init__(self, self.max_requests)
        self.apply_settings(snap)
        events = snap.get("events") or []
        has_totals = isinstance(snap.get("totals"), dict)
        if has_totals:
            self.totals = Totals.from_dict(snap["totals"])
        self.apply(events, count=not has_totals, dedup=False)
        self.runtime_started = snap.get("runtime_started") or self.totals.started or None
        return {"overview", "requests", "sessions", "events", "settings", "status"}

    def apply_settings(self, msg: dict[str, Any]) -> bool:
        changed = False
        if isinstance(msg.get("settings"), dict):
            self.settings = msg["settings"]
            changed = True
        if isinstance(msg.get("stages"), list):
            self.stages = list(msg["stages"])
        if isinstance(msg.get("available_stages"), list):
            self.available_stages = list(msg["available_stages"])
        if msg.get("profile"):
            self.profile = msg["profile"]
        if isinstance(msg.get("bypass"), list):
            self.bypass = set(msg["bypass"])
            for s in self.sessions.values():
                s.bypass = s.id in self.bypass
            changed = True
        return changed

    def dropped_events(self, n: int, totals: dict[str, Any] | None) -> None:
        self.dropped += n
        if isinstance(totals, dict):
            self.totals = Totals.from_dict(totals)

    def window_of(self, s: SessionInfo) -> int:
        """The window a session's fill is measured against: what its requests were managed against
        (the profile's ``tokens.context_window`` when each was sent), else the current settings'."""
        return s.window or int(get_path(self.settings, "tokens.context_window") or 200_000)

    @property
    def thresholds(self) -> tuple[float, float]:
        return (float(get_path(self.settings, "compaction.soft_threshold", 0.70)),
                float(get_path(self.settings, "compaction.hard_threshold", 0.85)))

    # -- events -------------------------------------------------------------------------------------

    def apply(self, events: Iterable[dict[str, Any]], count: bool = True, dedup: bool = True) -> set[str]:
        """Fold events in. ``count`` adds them to the totals (off when the totals came with a snapshot);
        ``dedup`` skips events already applied (a live batch may repeat the snapshot's newest events;
        off for a log, where a restarted proxy's sequence numbers start again)."""
        dirty: set[str] = set()
        for ev in events:
            if count:
                self.totals.add(ev)
            seq = ev.get("seq")
            if isinstance(seq, int) and seq:
                if dedup and self._seen.peek(seq):  # a batch may repeat the snapshot's last events
                    continue
                self._seen.put(seq, True)
            self.events_seen += 1
            self.raw.append(ev)
            self._apply_one(ev, dirty)
        if dirty:
            dirty |= {"overview", "status"}
        return dirty

    def _session(self, sid: str | None, ts: float) -> SessionInfo | None:
        if not sid:
            return None
        s = self.sessions.get(sid)
        if s is None:
            s = SessionInfo(id=sid, last_ts=ts, bypass=sid in self.bypass)
            self.sessions[sid] = s
            while len(self.sessions) > self.max_sessions:
                self.sessions.popitem(last=False)
        else:
            self.sessions.move_to_end(sid)
        s.last_ts = max(s.last_ts, ts)
        return s

    def _row(self, ev: dict[str, Any], create: bool) -> RequestRow | None:
        fid = ev.get("flow_id")
        if not fid:
            return None
        row = self.requests.get(fid)
        if row is None and create:
            row = self._add_row(RequestRow(flow_id=fid, ts=ev.get("ts") or 0.0))
        if row is not None:
            if not row.session and ev.get("session"):
                row.session = ev["session"]
            if row.replica is None and ev.get("replica"):
                row.replica = ev["replica"]
        return row

    def _add_row(self, row: RequestRow) -> RequestRow:
        self.requests[row.flow_id] = row
        while len(self.requests) > self.max_requests:
            self.requests.popitem(last=False)
        return row

    def _apply_one(self, ev: dict[str, Any], dirty: set[str]) -> None:
        t = ev.get("type")
        d = ev.get("data") or {}
        ts = ev.get("ts") or 0.0
        sess = self._session(ev.get("session"), ts) if t in ROW_TYPES or t == "ingest" else None
        if sess is not None:
            dirty.add("sessions")
        if t in CONTEXT_TYPES and _worth_listing(t, d):
            self._n += 1
            self.context.append(ContextEvent(ts, t, ev.get("session"), summarise(ev), self._n))
            dirty.add("events")
        if t == "startup":
            self.runtime_started = ts
            self.totals.started = self.totals.started or ts
            return
        if t == "bypass":
            sid, on = d.get("session"), bool(d.get("on"))
            if sid:
                (self.bypass.add if on else self.bypass.discard)(sid)
                if sid in self.sessions:
                    self.sessions[sid].bypass = on
                dirty.update({"sessions", "settings"})
            return
        if t == "ingest" or (d.get("history") is True and t != "request"):
            self._ingested(ev, d, sess)
            dirty.add("requests")
            return
        if t not in ROW_TYPES:
            return
        row = self._row(ev, create=t in ("request", "forward", "response", "error", "turn"))
        if row is None:
            return
        dirty.add("requests")
        apply = getattr(self, f"_on_{t}", None)
        if apply is not None:
            apply(ev, d, row, sess)

    # what each event type changes in its request's row and its session (``_on_<type>``)

    def _on_request(self, ev: dict[str, Any], d: dict[str, Any], row: RequestRow, sess: SessionInfo | None) -> None:
        row.ts = ev.get("ts") or 0.0
        row.api = d.get("api") or row.api
        row.transport = d.get("transport") or row.transport
        row.model = d.get("model") or row.model
        row.mode = d.get("mode") or row.mode
        row.messages = d.get("messages")
        if d.get("tokens_in") is not None:
            row.tokens_in = d["tokens_in"]
        if sess is None:
            return
        n = (self._session_requests.peek(sess.id) or 0) + 1  # (bounded: long-gone ids restart at 1)
        self._session_requests.put(sess.id, n)
        row.turn = n
        sess.requests += 1
        sess.model = row.model or sess.model
        sess.tokens_in = row.tokens_in
        window = number_or_none(d.get("context_window"))
        if window and window > 0:
            sess.window = int(window)

    def _on_stage(self, ev: dict[str, Any], d: dict[str, Any], row: RequestRow, sess: SessionInfo | None) -> None:
        name = d.get("stage") or "?"
        if number_or_none(d.get("ms")) is not None:
            row.stages[name] = d["ms"]
        row.stage_status[name] = d.get("status") or "ok"

    def _on_tags(self, ev: dict[str, Any], d: dict[str, Any], row: RequestRow, sess: SessionInfo | None) -> None:
        tags = normalise_tags(d.get("tags"))
        row.tags = tags
        if sess is not None and tags:
            sess.recent_tags.append(tags)

    def _on_memory(self, ev: dict[str, Any], d: dict[str, Any], row: RequestRow, sess: SessionInfo | None) -> None:
        self.sent.note(ev)

    def _on_forward(self, ev: dict[str, Any], d: dict[str, Any], row: RequestRow, sess: SessionInfo | None) -> None:
        freed, mem, _ = self.sent.settle(ev)
        row.mem_tokens = mem or None
        if d.get("tokens_in") is not None:
            row.tokens_in = d["tokens_in"]
        if d.get("tokens_out") is not None:
            row.tokens_sent = d["tokens_out"]
        row.pipeline_ms = d.get("pipeline_ms", row.pipeline_ms)
        row.changed = bool(d.get("changed"))
        row.blocked = bool(d.get("blocked"))
        row.reason = d.get("reason") or row.reason
        if row.blocked and d.get("status"):
            row.status = d["status"]
        if sess is not None:
            sess.tokens_freed += freed
            sess.mem_tokens += mem
            sess.tokens_in, sess.tokens_sent = row.tokens_in, row.tokens_sent

    @staticmethod
    def _usage(d: dict[str, Any], row: RequestRow, sess: SessionInfo | None) -> None:
        if isinstance(d.get("usage"), dict):
            row.usage = d["usage"]
        if sess is not None and row.provider_input is not None:
            sess.provider_input = row.provider_input

    def _on_response(self, ev: dict[str, Any], d: dict[str, Any], row: RequestRow, sess: SessionInfo | None) -> None:
        row.status = d.get("status") if d.get("status") is not None else ("error" if d.get("error") else row.status)
        row.upstream_ms = d.get("upstream_ms", row.upstream_ms)
        if d.get("error"):
            row.error = str(d["error"])
        self._usage(d, row, sess)

    def _on_turn(self, ev: dict[str, Any], d: dict[str, Any], row: RequestRow, sess: SessionInfo | None) -> None:
        self._usage(d, row, sess)
        row.price = Price.of_turn(d)
        tags = normalise_tags(d.get("tags"))
        if tags and not row.tags:
            row.tags = tags
            if sess is not None:
                sess.recent_tags.append(tags)
        if sess is not None:
            sess.turns += 1

    def _on_budget(self, ev: dict[str, Any], d: dict[str, Any], row: RequestRow, sess: SessionInfo | None) -> None:
        row.level = d.get("level")
        if sess is not None:
            sess.level = row.level

    def _on_compaction(self, ev: dict[str, Any], d: dict[str, Any], row: RequestRow, sess: SessionInfo | None) -> None:
        if not applied_compaction(d):
            return
        self.sent.note(ev)
        row.compacted = True
        if sess is not None:
            sess.compactions += new_compaction(d)

    def _on_clearing(self, ev: dict[str, Any], d: dict[str, Any], row: RequestRow, sess: SessionInfo | None) -> None:
        self.sent.note(ev)
        row.cleared = True
        if sess is not None:
            sess.clearings += new_clearing(d)

    def _on_error(self, ev: dict[str, Any], d: dict[str, Any], row: RequestRow, sess: SessionInfo | None) -> None:
        row.error = str(d.get("message") or d.get("where") or "error")

    def _ingested(self, ev: dict[str, Any], d: dict[str, Any], sess: SessionInfo | None) -> None:
        key = ev.get("flow_id") or f"ingest-{ev.get('seq')}"
        key = f"{key}#h{d.get('turn', ev.get('seq'))}"
        row = self._add_row(RequestRow(
            flow_id=key, ts=ev.get("ts") or 0.0, session=ev.get("session"), ingested=True, mode="history",
            turn=d.get("turn") if isinstance(d.get("turn"), int) else None, tags=normalise_tags(d.get("tags")),
            tokens_in=d.get("tokens") if isinstance(d.get("tokens"), int) else None,
            reason=f"ingested {d.get('items', '')} from history".replace("  ", " ")))
        if sess is not None and row.tags:
            sess.recent_tags.append(row.tags)

    # -- views --------------------------------------------------------------------------------------

    def newest_requests(self) -> list[RequestRow]:
        return list(reversed(self.requests.values()))

    def recent_sessions(self, limit: int | None = None) -> list[SessionInfo]:
        return list(reversed(self.sessions.values()))[:limit or None]

    def active_tags(self) -> list[tuple[str, int]]:
        return top_tags((t for s in list(self.sessions.values())[-10:] for t in s.recent_tags), 10)

    def uptime(self, now: float) -> float | None:
        return None if self.runtime_started is None else max(0.0, now - self.runtime_started)

    def session_export(self, session: str) -> dict[str, Any]:
        """An offline session snapshot (events the TUI holds; bodies need a live proxy)."""
        flows = {e.get("flow_id") for e in self.raw if e.get("session") == session and e.get("flow_id")}
        events = [e for e in self.raw if e.get("session") == session or e.get("flow_id") in flows]
        return {"kind": "contextwarden.session", "version": 1, "session": session, "exported_at": time.time(),
                "bypassed": session in self.bypass, "profile": self.profile, "settings": self.settings,
                "events": events, "requests": [], "note": "exported from the TUI's own events: request bodies need a live proxy"}
