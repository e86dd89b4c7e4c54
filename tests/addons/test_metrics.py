"""The metrics addon fed from the event bus: outcomes, tokens, usage, the saving estimate, stage
histograms, errors by origin, the memory queue; and the Grafana dashboard only names metrics it has."""

from __future__ import annotations

import json
import re
from pathlib import Path

from contextwarden.addons.metrics import MetricsService, outcome_of
from contextwarden.core.events import Event
from tests.support.prom import parse_metrics as values
from tests.support.stages import Harness, settings_overrides
from tests.tui.events import EventFactory

ROOT = Path(__file__).resolve().parents[2]


def test_outcomes():
    assert outcome_of({"changed": True}) == "rewritten"
    assert outcome_of({"blocked": True}) == "blocked"
    assert outcome_of({"changed": False, "reason": "stage clearing error: StateUnavailable: x"}) == "failed_open"
    assert outcome_of({"changed": False, "reason": "invalid rewrite: y"}) == "failed_open"
    assert outcome_of({"changed": False, "reason": "session bypassed"}) == "observed"
    assert outcome_of({"changed": False, "reason": "unchanged"}) == "unchanged"


def test_metrics_follow_the_events(cw_home):
    import urllib.request

    h = Harness(cw_home, overrides=settings_overrides(window=100_000, stages=["clearing"]))
    svc = MetricsService(h.rt, "127.0.0.1", 0)
    try:
        f = EventFactory()
        evs = f.request("s1", tokens_in=50_000, tokens_sent=30_000, stage_ms={"clearing": 2.0, "compaction": 9.5},
                        usage={"input_tokens": 1000, "output_tokens": 200, "cache_read_input_tokens": 20_000,
                               "cache_creation_input_tokens": 9000})
        evs.append(f.ev("error", {"where": "stage", "stage": "clearing", "message": "StateUnavailable"}, evs[0]["flow_id"]))
        evs.append(f.ev("memory", {"dropped": 3, "queued": 17, "reason": "queue full"}))
        for d in evs:
            h.rt.bus.publish(Event.from_dict(d))
        text = urllib.request.urlopen(f"http://127.0.0.1:{svc.port}/metrics", timeout=10).read().decode()
        v = values(text)
        assert v['contextwarden_requests_total{api="anthropic",outcome="rewritten"}'] == 1
        assert v["contextwarden_tokens_in_total"] == 50_000 and v["contextwarden_tokens_sent_total"] == 30_000
        assert v['contextwarden_provider_tokens_total{kind="cache_read"}'] == 20_000
        assert v['contextwarden_provider_tokens_total{kind="cache_write"}'] == 9000
        # 20K tokens freed at what the turn paid per sent token (1000 + 1.25*9000 + 0.1*20000 units for
        # 30K sent), at Sonnet's $3 per million input tokens
        want = 20_000 * (1000 + 1.25 * 9000 + 0.1 * 20_000) / 30_000 * 3 / 1e6
        assert abs(v["contextwarden_estimated_saving_usd_total"] - want) < 1e-9
        assert v['contextwarden_stage_seconds_count{stage="compaction"}'] == 1
        assert v['contextwarden_stage_seconds_bucket{le="0.01",stage="compaction"}'] == 1
        assert v['contextwarden_stage_seconds_bucket{le="0.005",stage="compaction"}'] == 0
        assert v['contextwarden_errors_total{origin="stage:clearing"}'] == 1
        assert v["contextwarden_memory_queue_depth"] == 17 and v["contextwarden_memory_dropped_total"] == 3
        assert v["contextwarden_state_up"] == 1
        ok = urllib.request.urlopen(f"http://127.0.0.1:{svc.port}/readyz", timeout=10)
        assert ok.status == 200 and json.loads(ok.read()) == {"ready": True, "state": True}
        assert urllib.request.urlopen(f"http://127.0.0.1:{svc.port}/healthz", timeout=10).status == 200

        # every metric the dashboard queries exists
        families = {m.group(1) for m in re.finditer(r"^# TYPE (\S+) ", text, re.M)}
        names = set()
        for fam in families:
            names |= {fam, fam + "_total", fam + "_bucket", fam + "_count", fam + "_sum"}
        dash = json.loads((ROOT / "docs" / "grafana-contextwarden.json").read_text())
        used = {n for p in dash["panels"] for t in p["targets"] for n in re.findall(r"contextwarden_[a-z_]+", t["expr"])}
        assert used and used <= names, used - names
    finally:
        svc.stop()
        h.close()
