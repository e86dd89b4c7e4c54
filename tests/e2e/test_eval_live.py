"""``contextwarden eval locomo --live``, small: the first sessions of one LoCoMo conversation replayed
in-process and through a real proxy (``contextwarden run``, memory in its own process, a recording
stand-in upstream) with the same profile, at a window small enough that compaction and memory do the
work; the questions whose evidence lies in those sessions must recall the same evidence both ways. As
``contextwarden eval`` does, both runs share one embedding cache: the live proxy's memory process reads the
vectors the in-process run computed instead of computing them again."""

from __future__ import annotations

import json

from contextwarden.offline.memory import eval_locomo as ev
from contextwarden.offline.memory import eval_longmemeval as lme
from tests.conftest import EVAL_DIR, MODEL_DIR

SESSIONS = 4
QUESTIONS = 6
WINDOW = 2048
COMPACTION = {"summary_max_tokens": 200, "min_span_tokens": 200}
# the live proxy's memory process embeds what the cache lacks in its (niced) ingestion thread, not in the worker
# at the idle CPU priority, which the suite's other workers starve on two cores (the live LoCoMo run took 139 s
# instead of 20 beside two busy loops); the worker has tests of its own (test_embedworker.py, test_process.py)
NOT_IDLE = {"model_dir": str(MODEL_DIR), "embed_idle": False}


def small_sample() -> dict:
    """conv-30's first sessions, and the first questions whose evidence lies in them."""
    sample = next(s for s in json.loads((EVAL_DIR / "locomo_dev.json").read_text()) if s["sample_id"] == "conv-30")
    conv = {k: v for k, v in sample["conversation"].items() if not k.startswith("session_")}
    ids = set()
    for i in range(1, SESSIONS + 1):
        conv[f"session_{i}"] = sample["conversation"][f"session_{i}"]
        conv[f"session_{i}_date_time"] = sample["conversation"].get(f"session_{i}_date_time", "")
        ids |= {t["dia_id"] for t in conv[f"session_{i}"]}
    qa = [q for q in sample["qa"] if q.get("evidence") and all(e in ids for e in q["evidence"])][:QUESTIONS]
    return {"sample_id": "conv-30", "conversation": conv, "qa": qa}


def test_live_proxy_recalls_what_the_in_process_eval_recalls(tmp_path):
    data = [small_sample()]
    kw = dict(memory=NOT_IDLE, compaction=COMPACTION, window=WINDOW, progress=None,
              embed_cache=tmp_path / "embeddings.sqlite")
    inproc = ev.run(data, home=tmp_path / "inproc", **kw)
    live = ev.run(data, home=tmp_path / "live", live=True, **kw)
    assert len(live.questions) == len(inproc.questions) == QUESTIONS
    assert live.fallbacks == 0 and live.dropped == 0
    # the window is too small for the whole conversation: memory brought evidence back, live too
    assert sum(q.injected for q in live.questions) > 0
    assert [q.hits for q in live.questions] == [q.hits for q in inproc.questions], \
        (ev.side_by_side(inproc, live), [(q.hits, q.injected, q.reason) for q in live.questions],
         [(q.hits, q.injected, q.reason) for q in inproc.questions])
    out = ev.side_by_side(inproc, live)
    assert "difference +0.000" in out and "conv-30" in out


def test_live_longmemeval_recalls_what_the_in_process_eval_recalls(tmp_path):
    """``contextwarden eval longmemeval --live``, small: one question's reduced haystack (the answer
    session and four others) at a 4K window, in-process and through a real proxy with the same profile."""
    args = dict(question_ids=["29f2956b"], window=4096, haystack_limit=5, progress=None,
                memory={**NOT_IDLE, "budget_fraction": 0.25},
                compaction={"summary_max_tokens": 300, "min_span_tokens": 300, "protect_recent_turns": 1},
                embed_cache=tmp_path / "embeddings.sqlite")
    data = EVAL_DIR / "longmemeval_s_dev.json"
    inproc = lme.run(data, home=tmp_path / "inproc", **args)
    live = lme.run(data, home=tmp_path / "live", live=True, **args)
    assert len(live.questions) == len(inproc.questions) == 1
    assert live.fallbacks == 0 and live.dropped == 0 and live.requests == inproc.requests
    a, b = inproc.questions[0], live.questions[0]
    # the window is too small for the haystack: memory brought the answer session back, live too
    assert b.full_tokens > 2 * 4096 and 0 < b.tokens <= 4096 and b.injected > 0
    assert (b.sessions_hit, b.turns_hit) == (a.sessions_hit, a.turns_hit) and b.sessions_hit == 1, \
        lme.side_by_side(inproc, live)
    assert "recall_any 1.000" in lme.side_by_side(inproc, live)
