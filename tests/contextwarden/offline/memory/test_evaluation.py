"""The evaluations, small: LoCoMo (a conversation's first sessions, a few questions) through the CLI, and a LongMemEval
smoke replay; both must beat the truncation baseline at the same tokens. Plus the metric helpers."""

from __future__ import annotations

from types import SimpleNamespace

import orjson

from contextwarden.cli import main as cli_main
from contextwarden.compress import policy
from contextwarden.memory.inject import render_block
from contextwarden.memory.items import MemoryItem
from contextwarden.models import ApiKind
from contextwarden.offline.assets import TOKENIZER_WAIT_S
from contextwarden.offline.memory import eval_locomo as ev
from contextwarden.offline.memory import eval_longmemeval as lme
from contextwarden.offline.memory.evaluation import contains, eval_replayer, normalise, request_text, truncate_to
from tests.conftest import EVAL_DIR


def first_sessions(sample: dict, n: int) -> dict:
    """A LoCoMo sample with only its first ``n`` sessions (and their dates)."""
    conv = {k: v for k, v in sample["conversation"].items()
            if not k.startswith("session_") or int(k.split("_")[1]) <= n}
    return {**sample, "conversation": conv}


def test_locomo_cli_one_conversation_beats_truncation(tmp_path, capsys, shared):
    # the data cut to each conversation's first six sessions keeps this quick (the replay is most of its time):
    # conv-30's 119 of 369 turns hold the evidence of its first 12 questions but one turn (D15:1), and their
    # ~4.7K tokens (~6.3K dated) are more than the window: truncation keeps only the later sessions
    data = tmp_path / "locomo_dev.json"
    data.write_bytes(orjson.dumps([first_sessions(s, 6) for s in orjson.loads((EVAL_DIR / "locomo_dev.json").read_bytes())]))
    out = tmp_path / "locomo.json"
    rc = cli_main(["eval", "locomo", "--conversation", "conv-30", "--questions", "12", "--cache", "none",
                   "--quiet", "--json", str(out), "--data", str(data), "--framing", "turns,dated-merged"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "LoCoMo (turns): 1 conversations, 119 turns" in printed
    assert "LoCoMo (dated-merged): 1 conversations, 119 turns" in printed
    for row in ("contextwarden", "truncation (last N, same tokens)", "full history", "evidence-weighted, categories 1-4",
                "LoCoMo by framing", "target: evidence-weighted recall"):
        assert row in printed
    res = orjson.loads(out.read_bytes())
    assert set(res["framings"]) == {"turns", "dated-merged"}
    qs = res["framings"]["turns"]
    assert len(qs) == 12 and res["settings"]["window"] == 4096
    recall = sum(q["hits"] / q["evidence"] for q in qs) / len(qs)
    trunc = sum(q["trunc_hits"] / q["evidence"] for q in qs) / len(qs)
    assert recall > trunc + 0.3, (recall, trunc)
    assert all(q["tokens"] <= 4096 for q in qs)  # the window holds, memory included
    assert all(q["trunc_tokens"] <= q["tokens"] for q in qs)
    assert sum(q["injected"] for q in qs) > 0


def test_locomo_framings_keep_every_turn_text_and_the_speakers_roles():
    """Each framing holds every turn's own text once, in a message of its speaker's role: merged ones
    join consecutive turns of one speaker, dated ones write the session's date before each turn."""
    sample = next(s for s in orjson.loads((EVAL_DIR / "locomo_dev.json").read_bytes()) if s["sample_id"] == "conv-30")
    conv = sample["conversation"]
    turns, by_id = ev.framed(conv, "turns")
    merged, _ = ev.framed(conv, "merged")
    dated, _ = ev.framed(conv, "dated-merged")
    assert len(turns) == len(by_id) > len(merged) == len(dated)
    assert all(a["role"] != b["role"] for a, b in zip(merged, merged[1:]))
    date = conv["session_1_date_time"]
    first = conv["session_1"][0]
    assert dated[0]["content"].startswith(f"({date}) {first['speaker']}: {first['text']}")
    for framing in (merged, dated):
        text = "\n".join(m["content"] for m in framing)
        assert all(t in text for t in by_id.values())


def test_longmemeval_smoke_beats_truncation(shared):
    # a reduced haystack (the answer session first, then 4 others) and a 4K window keep this quick (the
    # embedding of ~12K tokens is most of its time); the benchmark itself is `contextwarden eval longmemeval`
    report = lme.run(EVAL_DIR / "longmemeval_s_dev.json", question_ids=["29f2956b"], window=4096,
                     haystack_limit=5, progress=None, memory={"budget_fraction": 0.25},
                     compaction={"summary_max_tokens": 300, "min_span_tokens": 300, "protect_recent_turns": 1})
    assert len(report.questions) == 1
    q = report.questions[0]
    assert report.requests >= 5 and report.fallbacks == 0
    assert q.tokens <= 4096 and q.full_tokens > 2 * 4096
    assert q.turns_hit >= q.trunc_turns_hit and q.sessions_hit >= q.trunc_sessions_hit
    assert q.sessions_hit == 1 and q.trunc_sessions_hit == 0, q
    assert "recall_any" in report.render()


def test_request_text_and_containment_read_every_part_of_a_body():
    body = {"system": [{"type": "text", "text": "sys prompt"}],
            "messages": [{"role": "user", "content": "Hello   there"},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x",
                                                       "content": [{"type": "text", "text": "tool  said\nthis"}]},
                                                      {"type": "text", "text": "memory block text"}]}]}
    text = request_text(body)
    assert contains(text, "Hello there") and contains(text, "tool said this") and contains(text, "sys prompt")
    assert contains(text, "memory  block\ntext") and not contains(text, "absent")


def test_longmemeval_reached_counts_long_turns_by_lines():
    long_turn = "\n".join(f"paragraph {i} with enough characters to be a line of its own here" for i in range(40))
    assert lme.reached("x " + " ".join(long_turn.split()) + " y", long_turn)
    half = " ".join(" ".join(long_turn.splitlines()[:25]).split())
    assert lme.reached(half, long_turn)  # chunk-stored: most of its lines reach the request
    assert not lme.reached(" ".join(long_turn.splitlines()[:5]), long_turn)
    # a short turn recalled by memory: each line quoted, its two chunks in the block in rank order
    short = "Here are a few videos you could share:\n\n1. How to Sit at a Desk by the Mayo Clinic\nThese offer clear demos."
    head, tail = short.rsplit("\n", 1)
    chunks = [MemoryItem(text=t, session="s", tenant="t", turn=3, role="assistant", kind="chunk", source_id="m-1",
                         ts=1.0) for t in (tail, head)]
    block = normalise(render_block(chunks))
    assert normalise(short) not in block and lme.reached(block, short) and contains(block, short)  # LoCoMo's too
    assert not lme.reached(normalise(render_block(chunks[1:])), short)  # a line missing: not reached
    assert lme._list("['a', 'b']") == ["a", "b"] and lme._list(["c"]) == ["c"]


def test_truncation_keeps_the_longest_suffix_that_fits(tmp_path):
    from contextwarden.offline.memory.replay import Replayer

    rp = Replayer.from_profile("claude-code", tmp_path / "home")
    try:
        msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " + "word " * 50} for i in range(20)]
        kept, used = truncate_to(rp.runtime, ApiKind.ANTHROPIC, msgs, 300, "claude-eval")
        assert kept == msgs[-len(kept):] and 1 <= len(kept) < 20 and used <= 300
        more, _ = truncate_to(rp.runtime, ApiKind.ANTHROPIC, msgs, 600, "claude-eval")
        assert len(more) > len(kept)
    finally:
        rp.close()


def test_in_process_eval_runs_on_its_own_clock_whatever_the_machine_takes(tmp_path, monkeypatch):
    """A loaded machine that takes an hour between two requests (a slow ingestion flush before a question)
    sends the same body as a fast one: the eval's requests carry their own times, so compaction's cache
    model sees the same warm prefix (no compaction at the soft threshold) on every run."""
    wall = [1_800_000_000.0]
    monkeypatch.setattr(policy, "time", SimpleNamespace(time=lambda: wall[0]))
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " + "word " * 90} for i in range(21)]
    sent = []
    for gap in (0.0, 3600.0):
        with eval_replayer("clock", tmp_path / str(gap), 4096, {"enabled": False}, ev.COMPACTION) as rp:
            rp.send(msgs[:15], session="s")
            wall[0] += gap
            sent.append(rp.send(msgs, session="s"))
    fast, slow = sent
    assert ev.COMPACTION["soft_threshold"] * 4096 < fast.ctx.tokens_in < ev.COMPACTION["hard_threshold"] * 4096
    assert "compaction" not in fast.ctx.notes  # warm: re-writing the cache does not pay yet
    assert slow.wire == fast.wire and slow.tokens() == fast.tokens()


def test_the_eval_waits_for_the_tokenizer_as_a_trace_replay_does(tmp_path, shared):
    """On a loaded machine tiktoken took longer than the proxy's 15 s to load and a LongMemEval run counted
    4 characters a token (124,553 tokens a history where tiktoken gives 105,128), its thresholds elsewhere:
    an evaluation waits for the tokenizer as long as a trace replay does."""
    with eval_replayer("tokens", tmp_path, 4096, {"enabled": False}, ev.COMPACTION) as rp:
        assert rp.runtime.settings.tokens.load_timeout_s == TOKENIZER_WAIT_S
        assert rp.runtime.tokens.source.startswith("tiktoken")
