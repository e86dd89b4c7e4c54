"""Memory retrieval watches its own deadline: the earlier of ``memory.timeout_ms`` and the memory stage's
budget (less the time the rest of the stage needs). It gives up gracefully, with a ``memory`` event
saying after how long and against which budget, instead of overrunning the stage budget (which would
cost the request the other stages' new work: the fall-back to the decided state)."""

from __future__ import annotations

import time

from tests.plugins.test_memory import ask, converse, memory_event, replayer

STAGE_BUDGET_MS = 2000


def test_retrieval_gives_up_within_the_stage_budget(tmp_path):
    # memory.timeout_ms stays 20 s (the profile's): the stage's budget is the one that applies
    rp = replayer(tmp_path, f"pipeline: {{budgets_ms: {{memory: {STAGE_BUDGET_MS}}}, adaptive_budgets: false}}\n")
    try:
        msgs = converse(rp)
        svc = rp.memory()
        real = svc.store.vector_query

        def slow(*a, **kw):  # a Chroma that answers well past the stage's budget
            time.sleep(STAGE_BUDGET_MS / 1000 * 2)
            return real(*a, **kw)

        svc.store.vector_query = slow
        sent = ask(rp, msgs, "What is the name of the dog I adopted?")
        ev = memory_event(rp, sent.ctx.flow_id)
        assert ev["skipped"] == "timeout" and ev["injected"] == 0
        share = STAGE_BUDGET_MS * 0.8
        assert ev["against"] == f"the memory stage's {STAGE_BUDGET_MS} ms budget ({share:.0f} ms of it for the search)"
        assert ev["deadline_ms"] == share and ev["gave_up_after_ms"] >= share * 0.95  # (from the stage call's own start)
        assert "vector query had not returned" in ev["gave_up"]
        # the stage itself finished in time: no fall-back, the other stages' work went out
        [st] = [e.data for e in rp.runtime.bus.recent if e.type == "stage" and e.flow_id == sent.ctx.flow_id
                and e.data["stage"] == "memory"]
        assert st["status"] == "ok"
        assert sent.outcome.fallback is None and sent.outcome.reason == "rewritten"
    finally:
        rp.close()
