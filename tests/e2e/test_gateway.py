"""A team gateway: two mitmdump replicas in reverse mode share one session state on a real redis-server.

The client's requests of one session alternate between the replicas; the bodies the upstream gets
are byte-identical to a single-proxy run of the same session (SQLite, one process). Mid-session one
replica is killed (a third one, which had not served the session, takes its place), and Redis is
stopped: the request sent meanwhile goes upstream exactly as the client sent it, with error events,
and once Redis is back the session's decisions apply again. ``/metrics`` is scraped along the way.

The session: 14 requests of a growing Claude-Code-like tool loop (``anthropic_tool_loop``) with the
claude-code profile on a 16K window: clearing decides new stubs on requests 5-8, 10, 12 and 14,
compaction decides on request 11 (past the hard threshold) and re-applies its summary after that.
"""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request

import httpx
import orjson

from tests.support.prom import parse_metrics
from tests.support.proxy import ProxyProcess, free_port, start_together, stop_together
from tests.support.redis_server import RedisServer
from tests.support.stages import anthropic_tool_loop
from tests.support.upstream import StandIn
from tests.support.wait import wait_until

REQUESTS = 14
KILL_AFTER = 9  # replica A is killed after serving request 9; a fresh replica takes its place
REDIS_DOWN_AT = 13  # no new decision on it in the single-proxy run; it re-applies clearing and compaction
SETTINGS = {
    "CONTEXTWARDEN_TOKENS__CONTEXT_WINDOW": "16000",
    "CONTEXTWARDEN_TOKENS__CALIBRATE": "false",
    "CONTEXTWARDEN_MEMORY__ENABLED": "false",  # what memory injects depends on background ingestion timing
    "CONTEXTWARDEN_COMPRESSION__ENABLED": "false",  # (no result is large enough: no workers to start)
    "CONTEXTWARDEN_CLEARING__ENABLED": "true",
    "CONTEXTWARDEN_CLEARING__TRIGGER_TOKENS": "7000",
    "CONTEXTWARDEN_CLEARING__KEEP_RECENT": "4",
    "CONTEXTWARDEN_CLEARING__CLEAR_AT_LEAST": "1500",
    "CONTEXTWARDEN_CLEARING__MIN_RESULT_TOKENS": "200",
    "CONTEXTWARDEN_COMPACTION__ENABLED": "true",
    "CONTEXTWARDEN_COMPACTION__SUMMARISER": "extractive",
    "CONTEXTWARDEN_COMPACTION__SOFT_THRESHOLD": "0.45",
    "CONTEXTWARDEN_COMPACTION__HARD_THRESHOLD": "0.5",
    "CONTEXTWARDEN_COMPACTION__TARGET": "0.4",
    "CONTEXTWARDEN_COMPACTION__PROTECT_RECENT_TURNS": "2",
    "CONTEXTWARDEN_COMPACTION__MIN_SPAN_TOKENS": "1000",
    "CONTEXTWARDEN_PIPELINE__STAGE_BUDGET_MS": "20000",  # a loaded 2-core box
}
HEADERS = {"content-type": "application/json", "x-api-key": "sk-ant-gateway-test", "anthropic-version": "2023-06-01"}


def body_bytes(n: int) -> bytes:
    return orjson.dumps(anthropic_tool_loop(n, result_words=300, session="gw"))


def send(proxy: ProxyProcess, n: int, standin: StandIn, **headers) -> bytes:
    """Request ``n`` of the session through ``proxy``; returns the body the upstream received."""
    before = len(standin.requests("/v1/messages"))
    r = httpx.post(proxy.url + "/v1/messages", content=body_bytes(n), headers={**HEADERS, **headers}, timeout=60)
    assert r.status_code == 200, r.text[:500]
    recs = standin.wait_for(before + 1, "/v1/messages")
    assert len(recs) == before + 1
    return recs[-1].decoded_body()


def replica(tmp, name: str, upstream: str, redis_url: str | None, metrics_port: int = 0) -> ProxyProcess:
    env = dict(SETTINGS)
    if redis_url:
        env.update(CONTEXTWARDEN_STATE__URL=redis_url, CONTEXTWARDEN_STATE__REPLICA=name)
    if metrics_port:
        env["CONTEXTWARDEN_METRICS__PORT"] = str(metrics_port)
    return ProxyProcess(tmp / name, name=name, profile="claude-code", reverse=upstream, env=env)


def scrape(port: int) -> dict[str, float]:
    return parse_metrics(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())


def ready(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_replicas_on_redis_send_what_one_proxy_sends(tmp_path):
    with StandIn() as standin, RedisServer(tmp_path) as redis:
        # -- the single-proxy run: the reference bodies (request 13 bypassed, as Redis down will be)
        single = replica(tmp_path, "single", standin.url, None)
        ports = {"A": free_port(), "B": free_port(), "C": free_port()}
        a = replica(tmp_path, "A", standin.url, redis.url, ports["A"])
        b = replica(tmp_path, "B", standin.url, redis.url, ports["B"])
        c = replica(tmp_path, "C", standin.url, redis.url, ports["C"])  # takes A's place once A is killed
        procs = [single, a, b, c]
        start_together(procs)
        try:
            reference = {}
            for n in range(1, REQUESTS + 1):
                extra = {"x-contextwarden-bypass": "1"} if n == REDIS_DOWN_AT else {}
                reference[n] = send(single, n, standin, **extra)
            assert reference[REDIS_DOWN_AT] == body_bytes(REDIS_DOWN_AT)
            rewritten = [n for n in reference if reference[n] != body_bytes(n)]
            assert rewritten and min(rewritten) <= KILL_AFTER, "the session must be rewritten before the replicas' checks"
            assert any(b"[contextwarden: summary of the " in reference[n] for n in reference), "compaction must fire"
            single.stop(timeout=5)

            # -- two replicas, the requests alternating between them
            got = {}
            for n in range(1, KILL_AFTER + 1):
                got[n] = send(a if n % 2 else b, n, standin)
                assert got[n] == reference[n], f"request {n} differs from the single-proxy run"
            m_b = scrape(ports["B"])
            assert m_b['contextwarden_requests_total{api="anthropic",outcome="rewritten"}'] >= 1
            assert m_b['contextwarden_stage_seconds_count{stage="clearing"}'] == KILL_AFTER // 2
            assert m_b['contextwarden_stage_seconds_count{stage="compaction"}'] == KILL_AFTER // 2
            assert any(k.startswith("contextwarden_stage_seconds_bucket{") for k in m_b)
            assert ready(ports["B"]) == (200, {"ready": True, "state": True})
            assert {e.get("replica") for e in a.events("forward")} == {"A"}
            assert {e.get("replica") for e in b.events("forward")} == {"B"}

            # -- replica A dies (no goodbye); replica C, which has not seen the session, takes its place
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(10)
            got[KILL_AFTER + 1] = send(b, KILL_AFTER + 1, standin)
            for n in range(KILL_AFTER + 2, REDIS_DOWN_AT):
                got[n] = send(c if n % 2 else b, n, standin)
            for n in range(KILL_AFTER + 1, REDIS_DOWN_AT):
                assert got[n] == reference[n], f"request {n} (after the kill) differs from the single-proxy run"

            # -- Redis stops: traffic flows, as the client sent it, with error events and a metric
            before = scrape(ports["C"])
            mark = c.mark()
            redis.stop()
            got[REDIS_DOWN_AT] = send(c, REDIS_DOWN_AT, standin)
            assert reference[REDIS_DOWN_AT - 1] != body_bytes(REDIS_DOWN_AT - 1)  # (the session was being rewritten)
            assert got[REDIS_DOWN_AT] == body_bytes(REDIS_DOWN_AT), "Redis down: the client's own bytes go upstream"
            errors = c.events("error", since=mark, wait=5)
            assert any("unreachable" in (e["data"].get("message") or "") for e in errors), errors
            [fwd] = c.events("forward", since=mark)
            assert fwd["data"]["changed"] is False and fwd["replica"] == "C"
            status, checks = ready(ports["C"])
            assert status == 503 and checks["state"] is False
            after = scrape(ports["C"])
            failed = 'contextwarden_requests_total{api="anthropic",outcome="failed_open"}'
            assert after.get(failed, 0) == before.get(failed, 0) + 1
            assert after["contextwarden_state_up"] == 0
            assert sum(v for k, v in after.items() if k.startswith("contextwarden_errors_total")) > \
                sum(v for k, v in before.items() if k.startswith("contextwarden_errors_total"))

            # -- Redis is back (same data): the session's decisions apply again, without a restart
            redis.start()
            for port in (ports["B"], ports["C"]):  # a load balancer's readiness probe (also what notices it is back)
                assert wait_until(lambda: ready(port)[0] == 200, 20, interval=0.2), "the replica never saw Redis back"
            got[REQUESTS] = send(b, REQUESTS, standin)
            assert got[REQUESTS] == reference[REQUESTS], "after Redis came back the session must resume its decisions"
            assert ready(ports["C"])[0] == 200
            assert c.events("state", wait=5)[-1]["data"]["status"] == "up"
            # one view of every replica: their events in the Redis stream `contextwarden tui --redis` reads
            import redis as redis_client

            stream = redis_client.Redis.from_url(redis.url).xrange("cw:events")
            served = {orjson.loads(f[b"e"]).get("replica") for _, f in stream
                      if orjson.loads(f[b"e"])["type"] == "forward"}
            assert {"A", "B", "C"} <= served
        finally:
            stop_together(procs, timeout=5)



def test_a_fact_ingested_through_one_replica_is_injected_by_another(tmp_path):
    """Memory shared whole: replicas on one Chroma server and one Redis (which gives them one tenant
    salt, so one API key is one tenant everywhere)."""
    from tests.support.chroma_server import ChromaServer

    with StandIn() as standin, RedisServer(tmp_path) as redis, ChromaServer(tmp_path) as chroma:
        env = {"CONTEXTWARDEN_STATE__URL": redis.url, "CONTEXTWARDEN_MEMORY__CHROMA_URL": chroma.url,
               "CONTEXTWARDEN_MEMORY__TIMEOUT_MS": "10000",  # a loaded 2-core box
               "CONTEXTWARDEN_COMPRESSION__ENABLED": "false",  # (no tool results: no workers to start)
               "CONTEXTWARDEN_MEMORY__EMBED_IDLE": "false",  # (not held back by the suite's other workers)
               "CONTEXTWARDEN_PIPELINE__STAGE_BUDGET_MS": "20000"}
        a = ProxyProcess(tmp_path / "A", name="A", profile="claude-code", reverse=standin.url,
                         env={**env, "CONTEXTWARDEN_STATE__REPLICA": "A"}, ready_events=("startup", "memory_status"))
        b = ProxyProcess(tmp_path / "B", name="B", profile="claude-code", reverse=standin.url,
                         env={**env, "CONTEXTWARDEN_STATE__REPLICA": "B"}, ready_events=("startup", "memory_status"))
        start_together([a, b])
        try:

            def ask(proxy, session: str, text: str) -> dict:
                body = {"model": "claude-sonnet-4-5", "max_tokens": 256,
                        "metadata": {"user_id": f"user_x_account_y_session_{session}"},
                        "messages": [{"role": "user", "content": text}]}
                before = len(standin.requests("/v1/messages"))
                r = httpx.post(proxy.url + "/v1/messages", json=body, headers=HEADERS, timeout=60)
                assert r.status_code == 200, r.text[:300]
                return standin.wait_for(before + 1, "/v1/messages")[-1].json()

            ask(a, "s-one", "Remember this: the staging database password is rotated by the script "
                            "zebra_rotate_creds.sh every Tuesday at noon.")
            stored = a.wait_events(lambda e: e["type"] == "memory" and (e["data"].get("new") or 0) > 0, timeout=60)
            assert stored, "replica A never stored the turn"
            sent = ask(b, "s-two", "Which script rotates the staging database password, and when does it run?")
            last = sent["messages"][-1]["content"]
            text = last if isinstance(last, str) else " ".join(p.get("text", "") for p in last)
            assert "zebra_rotate_creds.sh" in text, ("replica B did not bring back what replica A stored",
                                                     [e["data"] for e in b.events("memory")], b.events("error"))
            [ev] = [e for e in b.events("memory", wait=5) if e["data"].get("injected")]
            assert ev["replica"] == "B"
        finally:
            stop_together([a, b], timeout=5)
