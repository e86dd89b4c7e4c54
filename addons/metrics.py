"""Prometheus metrics, health and readiness on their own port (``metrics.port``; 0 = off): ``/metrics``,
``/healthz`` (200) and ``/readyz`` (200 when the state backend and, with ``memory.chroma_url``, Chroma
answer; 503 with what is down). Fed from the event bus; the figures are this process's (a scraper sums
them over replicas, each named in ``contextwarden_info``).
"""

from __future__ import annotations

import logging
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from contextwarden.core.events import Event
from contextwarden.core.runtime import Runtime
from contextwarden.util.lru import LRU
from contextwarden.wire.cost import Price, billed_units, number, number_or_none

from .perruntime import PerRuntime

log = logging.getLogger(__name__)

# seconds: stages are sub-millisecond to tens of ms; upstream calls are seconds
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
FLOWS_KEPT = 4096  # flow id -> api, for the forward event (which does not repeat the api)


def outcome_of(data: dict[str, Any]) -> str:
    """A forward event's outcome: rewritten, unchanged, blocked, failed_open (a stage or the validator
    failed: the original went upstream) or observed (observe-only, bypassed session)."""
    if data.get("blocked"):
        return "blocked"
    if data.get("changed"):
        return "rewritten"
    reason = str(data.get("reason") or "")
    if reason.startswith(("stage ", "invalid rewrite")):
        return "failed_open"
    if reason in ("observe", "session bypassed"):
        return "observed"
    return "unchanged"


class Metrics:
    """The registry and the event subscriber that keeps it current."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.registry = r = CollectorRegistry()
        self.info = Gauge("contextwarden_info", "This proxy: replica name, profile and state backend", ["replica", "profile", "state"], registry=r)
        self.requests = Counter("contextwarden_requests", "Requests to a known API, by outcome", ["api", "outcome"], registry=r)
        self.rewritten = Counter("contextwarden_rewritten", "Requests sent rewritten", registry=r)
        self.blocked = Counter("contextwarden_blocked", "Requests answered by the proxy (budget)", registry=r)
        self.tokens_in = Counter("contextwarden_tokens_in", "Input tokens the clients sent (proxy's count)", registry=r)
        self.tokens_sent = Counter("contextwarden_tokens_sent", "Input tokens sent upstream (proxy's count)", registry=r)
        self.usage = Counter("contextwarden_provider_tokens", "Provider-reported usage", ["kind"], registry=r)
        self.saving = Counter("contextwarden_estimated_saving_usd",
                              "Estimated dollars saved: tokens freed, priced at what each turn paid per sent token", registry=r)
        self.freed = Counter("contextwarden_tokens_freed", "Tokens freed by clearing and compaction", ["stage"], registry=r)
        self.stage_s = Histogram("contextwarden_stage_seconds", "Time of each stage", ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self.pipeline_s = Histogram("contextwarden_pipeline_seconds", "Time from request to forward", buckets=STAGE_BUCKETS, registry=r)
        self.upstream_s = Histogram("contextwarden_upstream_seconds", "Upstream response time", buckets=UPSTREAM_BUCKETS, registry=r)
        self.errors = Counter("contextwarden_errors", "Error events, by where they came from", ["origin"], registry=r)
        self.mem_depth = Gauge("contextwarden_memory_queue_depth", "Items waiting for memory ingestion", registry=r)
        self.mem_dropped = Counter("contextwarden_memory_dropped", "Items dropped by memory ingestion (queue full)", registry=r)
        self.state_up = Gauge("contextwarden_state_up", "1 while the state backend answers", registry=r)
        self.chroma_up = Gauge("contextwarden_chroma_up", "1 while the Chroma server answers (1 without one)", registry=r)
        st = runtime.state
        self.info.labels(runtime.replica or "", runtime.settings.name,
                         "redis" if getattr(st, "shared", False) else "sqlite").set(1)
        self._api = LRU(FLOWS_KEPT)  # flow id -> its API, from its request event to its forward event
        self._unsubscribe = runtime.bus.subscribe(self.on_event)

    def close(self) -> None:
        self._unsubscribe()

    def on_event(self, ev: Event) -> None:
        t, d = ev.type, ev.data
        if t == "request":
            self._api.put(ev.flow_id or "", str(d.get("api") or "?"))
        elif t == "forward":
            api = self._api.peek(ev.flow_id or "") or "?"
            outcome = outcome_of(d)
            self.requests.labels(api, outcome).inc()
            if outcome == "rewritten":
                self.rewritten.inc()
            elif outcome == "blocked":
                self.blocked.inc()
            ti, to = number_or_none(d.get("tokens_in")), number_or_none(d.get("tokens_out"))
            if ti is not None and to is not None:
                self.tokens_in.inc(ti)
                self.tokens_sent.inc(to)
            ms = number_or_none(d.get("pipeline_ms"))
            if ms is not None:
                self.pipeline_s.observe(ms / 1000)
        elif t == "stage":
            ms = number_or_none(d.get("ms"))
            if ms is not None and d.get("stage"):
                self.stage_s.labels(str(d["stage"])).observe(ms / 1000)
        elif t == "response":
            ms = number_or_none(d.get("upstream_ms"))
            if ms is not None:
                self.upstream_s.observe(ms / 1000)
        elif t == "turn":
            self._turn(d)
        elif t == "error":
            origin = str(d.get("where") or "?")
            self.errors.labels(f"stage:{d['stage']}" if origin == "stage" and d.get("stage") else origin).inc()
        elif t == "memory":
            if number_or_none(d.get("queued")) is not None:
                self.mem_depth.set(d["queued"])
            if number_or_none(d.get("dropped")):
                self.mem_dropped.inc(d["dropped"])
        elif t == "clearing":
            if number_or_none(d.get("tokens_freed")):
                self.freed.labels("clearing").inc(d["tokens_freed"])
        elif t == "compaction" and d.get("applied"):
            before, after = number_or_none(d.get("tokens_before")), number_or_none(d.get("tokens_after"))
            if before is not None and after is not None and before > after:
                self.freed.labels("compaction").inc(before - after)

    def _turn(self, d: dict[str, Any]) -> None:
        usage = d.get("usage")
        if not isinstance(usage, dict):
            return
        for kind, key in (("input", "input_tokens"), ("output", "output_tokens"), ("cache_read", "cache_read_input_tokens"),
                          ("cache_write", "cache_creation_input_tokens")):
            if v := number(usage.get(key)):
                self.usage.labels(kind).inc(v)
        ti, ts = number_or_none(d.get("tokens_in")), number_or_none(d.get("tokens_sent"))
        price = Price.of_turn(d)  # (None: a model nobody priced, no dollars)
        if ti is not None and ts and ti > ts and price is not None:
            billed = billed_units(usage, price)  # input units this turn paid
            self.saving.inc((ti - ts) * billed / ts * price.input / 1e6)

    def checks(self) -> dict[str, bool]:
        """What readiness depends on: the state backend, and the Chroma server when there is one."""
        rt = self.runtime
        out = {"state": bool(rt.state.ping())}
        url = rt.settings.memory.chroma_url if rt.settings.memory.enabled else ""
        if url:
            out["chroma"] = chroma_alive(url)
        self.state_up.set(int(out["state"]))
        self.chroma_up.set(int(out.get("chroma", True)))
        return out

    def scrape(self) -> bytes:
        self.checks()
        return generate_latest(self.registry)


def chroma_alive(url: str) -> bool:
    base = url.rstrip("/")
    for path in ("/api/v2/heartbeat", "/api/v1/heartbeat"):
        try:
            with urllib.request.urlopen(base + path, timeout=0.5) as r:
                if r.status == 200:
                    return True
        except Exception:
            continue
    return False


class MetricsService:
    """The HTTP endpoint, on its own thread."""

    def __init__(self, runtime: Runtime, host: str, port: int) -> None:
        self.metrics = metrics = Metrics(runtime)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, metrics.scrape(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n", "text/plain")
                elif path == "/readyz":
                    checks = metrics.checks()
                    ok = all(checks.values())
                    self._send(200 if ok else 503, orjson.dumps({"ready": ok, **checks}), "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.host, self.port = str(self.server.server_address[0]), int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="cw-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.metrics.close()
        self.server.shutdown()
        self.server.server_close()


class MetricsServer(PerRuntime):
    """mitmproxy addon: a :class:`MetricsService` for the warden's runtime when ``metrics.port`` is set."""

    what = "metrics"

    def start(self, rt: Runtime) -> MetricsService | None:
        m = rt.settings.metrics
        if not m.port:
            return None
        svc = MetricsService(rt, m.host, m.port)
        log.info(f"contextwarden: metrics on http://{svc.host}:{svc.port}/metrics")
        return svc

