"""The event loop's share of reading streamed answers: read live (each chunk parsed as it comes, the
tap's way when a plugin reads the events) against deferred (chunks appended on the loop, read in one
go by ``finish`` off the loop: the proxy's way otherwise), measured in the same run.

    .venv/bin/python bench/tap_bench.py              # best of 5, 1,000 answers a stream
    .venv/bin/python bench/tap_bench.py --answers 300

The answers are chunked as they come off the wire: one chunk per SSE event (the stand-in, like the
providers, flushes each event). Streams: the stand-in's answers to the load benchmark's Claude Code
tool loop (bench/load_bench.py) for the three streaming dialects, and Anthropic streams rebuilt from
the assistant turns of the recorded Claude Code sessions in ../shared/eval/traces (their text and tool
inputs cut in ~4-token deltas, as the API sends them). Each turn is checked to be the one read live.

"loop" is the time on the event loop per answer (live: the tap's creation, every feed, finish and the
summary, as addons/observer.py did on the loop; deferred: the tap's creation and the appends);
"off" is the deferred ``finish`` and summary (the turn pool's share); "total" compares all the work.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from support import upstream  # noqa: E402

from contextwarden.models.base import ApiKind  # noqa: E402
from contextwarden.wire.streams.tap import ResponseTap  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
SSE = "text/event-stream; charset=utf-8"
DELTA_CHARS = 16  # ~4 tokens: the size of a real text or input_json delta


def standin_answers() -> dict[str, tuple[ApiKind, list[bytes]]]:
    """What the stand-in streams to the load benchmark's sessions (a sentence and a Bash call)."""
    si = upstream.StandIn()
    si.planner = lambda api, body: ("I'll read the next file.", ("Bash", {"command": "cat next.py"}))
    body = {"model": "claude-sonnet-4-5", "stream": True, "messages": [{"role": "user", "content": "go on"}],
            "tools": [{"name": "Bash"}]}
    raw = json.dumps(body).encode()
    return {
        "stand-in anthropic": (ApiKind.ANTHROPIC, upstream.anthropic_events(si, body, raw)),
        "stand-in chat": (ApiKind.OPENAI_CHAT, upstream.chat_chunks(si, {**body, "model": "gpt-4o"}, raw)),
        "stand-in responses": (ApiKind.OPENAI_RESPONSES, upstream.response_events(si, {**body, "model": "gpt-4o"}, raw)),
    }


def _sse(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


def _pieces(s: str) -> list[str]:
    return [s[i:i + DELTA_CHARS] for i in range(0, len(s), DELTA_CHARS)] or [""]


def anthropic_stream(content: list[dict], model: str) -> list[bytes]:
    """The events the Messages API streams for an assistant message with this content."""
    msg = {"id": "msg_01", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": None,
           "stop_sequence": None, "usage": {"input_tokens": 12, "cache_read_input_tokens": 30000, "output_tokens": 1}}
    out = [_sse("message_start", {"type": "message_start", "message": msg})]
    for i, block in enumerate(content):
        if block.get("type") == "text":
            out.append(_sse("content_block_start", {"type": "content_block_start", "index": i,
                                                    "content_block": {"type": "text", "text": ""}}))
            out += [_sse("content_block_delta", {"type": "content_block_delta", "index": i,
                                                 "delta": {"type": "text_delta", "text": p}}) for p in _pieces(block["text"])]
        elif block.get("type") == "tool_use":
            out.append(_sse("content_block_start", {"type": "content_block_start", "index": i, "content_block": {
                "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}))
            out += [_sse("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {
                "type": "input_json_delta", "partial_json": p}}) for p in _pieces(json.dumps(block["input"]))]
        else:
            continue
        out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": i}))
    out.append(_sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                      "usage": {"output_tokens": 100}}))
    out.append(_sse("message_stop", {"type": "message_stop"}))
    return out


def recorded_answers(limit: int = 200) -> list[list[bytes]]:
    """Assistant turns of the recorded Claude Code sessions, as streams."""
    out = []
    for path in sorted((SHARED / "eval" / "traces").glob("claude-code-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            msg = rec.get("message") if isinstance(rec, dict) else None
            if rec.get("type") == "assistant" and isinstance(msg, dict) and isinstance(msg.get("content"), list):
                out.append(anthropic_stream(msg["content"], msg.get("model") or "claude-sonnet-4-5"))
                if len(out) >= limit:
                    return out
    return out


def read_all(api: ApiKind, answers: list[list[bytes]], live: bool) -> tuple[float, float]:
    """CPU seconds of this thread (other processes on the machine do not count) reading ``answers``:
    (on the loop, off it). Live: creation, feeds, finish and summary all on the loop; deferred:
    creation and feeds on the loop, finish and summary off it."""
    t0 = time.thread_time()
    taps = []
    for chunks in answers:
        tap = ResponseTap(api, SSE, None, None, live=live)
        feed = tap.feed  # as the observer's stream callable holds it
        for c in chunks:
            feed(c)
        if live:
            tap.finish().summary()
        else:
            taps.append(tap)
    t1 = time.thread_time()
    for tap in taps:
        tap.finish().summary()
    return t1 - t0, time.thread_time() - t1


def summary(api: ApiKind, chunks: list[bytes], live: bool) -> dict:
    tap = ResponseTap(api, SSE, None, None, live=live)
    for c in chunks:
        tap.feed(c)
    return tap.finish().summary()


def measure(api: ApiKind, answers: list[list[bytes]], n: int, repeat: int) -> dict[str, float]:
    """Microseconds per answer: live on the loop, deferred on the loop, deferred off it (best of ``repeat``)."""
    for chunks in answers:  # the same turn either way
        assert summary(api, chunks, True) == summary(api, chunks, False)
    best = {"live": float("inf"), "loop": float("inf"), "off": float("inf")}
    picks = [answers[i % len(answers)] for i in range(n)]
    for _ in range(repeat):
        live, _ = read_all(api, picks, True)
        loop, off = read_all(api, picks, False)
        best["live"] = min(best["live"], live * 1e6 / n)
        best["loop"] = min(best["loop"], loop * 1e6 / n)
        best["off"] = min(best["off"], off * 1e6 / n)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--answers", type=int, default=1000, help="answers read per stream and repeat")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    cases = [(name, api, [chunks]) for name, (api, chunks) in standin_answers().items()]
    recorded = recorded_answers()
    if recorded:
        cases.append((f"recorded ({len(recorded)} turns)", ApiKind.ANTHROPIC, recorded))
    print(f"microseconds per answer, best of {args.repeat} x {args.answers} answers; one chunk per SSE event\n")
    print(f"| {'stream':<24} | {'chunks':>6} | {'live loop':>9} | {'defer loop':>10} | {'defer off':>9} | "
          f"{'loop ratio':>10} | {'total ratio':>11} |")
    print(f"|{'-' * 26}|{'-' * 8}|{'-' * 11}|{'-' * 12}|{'-' * 11}|{'-' * 12}|{'-' * 13}|")
    for name, api, answers in cases:
        r = measure(api, answers, args.answers, args.repeat)
        chunks = sum(len(a) for a in answers) / len(answers)
        print(f"| {name:<24} | {chunks:>6.0f} | {r['live']:>9.1f} | {r['loop']:>10.1f} | {r['off']:>9.1f} | "
              f"{r['live'] / r['loop']:>9.1f}x | {r['live'] / (r['loop'] + r['off']):>10.2f}x |")
    print("\nloop ratio = live on the loop / deferred on the loop (the event loop's CPU per answer, before/after);\n"
          "total ratio = live / deferred loop + off: > 1 when reading in one go is also less work in all.")


if __name__ == "__main__":
    main()
