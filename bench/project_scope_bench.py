"""Project scope on LoCoMo: does a new session find its own project's memory among other projects'?

A coding agent starts a new session in the same repository again and again; its earlier sessions there
are what memory should bring back first. Here each LoCoMo conversation is a project and each of its
sessions a session of its own (a new client session, its history holding only that session's messages,
the system prompt naming the project's working directory as Claude Code does), all under ONE tenant
(three projects in one memory). Every question is then asked in a fresh session of its conversation's
project (no history: what reaches the upstream is memory alone), once with the project weighed above
the rest (``memory.project_weight``, the default) and once without (weight = ``other_sessions_weight``),
on the same replayed store.

    nice .venv/bin/python bench/project_scope_bench.py [--limit 3] [--questions N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CONTEXTWARDEN_SHARED") or ROOT.parent / "shared")
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))

from contextwarden.offline.memory import eval_locomo as ev  # noqa: E402
from contextwarden.offline.memory.evaluation import contains, eval_replayer, pick, request_text  # noqa: E402
from contextwarden.settings.memory import MemorySection  # noqa: E402

KEY = "sk-eval-projects"


def body(project: str, messages: list[dict]) -> dict:
    return {"model": "claude-eval", "max_tokens": 1024, "messages": messages,
            "system": [{"type": "text", "text": "You are a helpful assistant.\n\n# Environment\n"
                                                f" - Primary working directory: /work/{project}\n - Platform: linux\n"}]}


def replay(rp, sample: dict) -> dict[str, str]:
    """Every session of the conversation as a client session of its own, in the conversation's project."""
    conv, cid = sample["conversation"], sample["sample_id"]
    by_id: dict[str, str] = {}
    for n, (_date, turns) in enumerate(ev.sessions_of(conv), start=1):
        messages: list[dict] = []
        for t in turns:
            by_id[t["dia_id"]] = t["text"]
            role = "user" if t["speaker"] == conv["speaker_a"] else "assistant"
            content = ev.turn_content(t)
            if role == "assistant" and messages:  # as the LoCoMo eval replays a turn
                rp.complete(rp.send(body=body(cid, messages), api_key=KEY, session=f"{cid}/s{n}"), content)
            messages.append({"role": role, "content": content})
    return by_id


def ask(rp, samples: list[dict], by_id: dict[str, dict[str, str]], questions: int | None, tag: str) -> list[float]:
    recalls = []
    for sample in samples:
        cid = sample["sample_id"]
        for i, q in enumerate(sample["qa"][:questions] if questions else sample["qa"]):
            ids = [e for e in q.get("evidence", []) if e in by_id[cid]]
            if not ids:
                continue
            sent = rp.send(body=body(cid, [{"role": "user", "content": q["question"]}]), api_key=KEY,
                           session=f"{cid}/{tag}-q{i}")
            text = request_text(sent.wire)
            recalls.append(sum(contains(text, by_id[cid][e]) for e in ids) / len(ids))
    return recalls


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=3, help="LoCoMo conversations (projects)")
    ap.add_argument("--questions", type=int, default=None, help="the first N questions of each")
    ap.add_argument("--weights", default=None,
                    help="memory.project_weight values to ask with, comma-separated (default: the default and "
                         "other_sessions_weight, i.e. no preference)")
    args = ap.parse_args()
    samples = pick(ev.load(SHARED / "eval" / "locomo_dev.json"), args.limit, None, "sample_id")
    mem = {**ev.MEMORY, "model_dir": str(SHARED / "models" / "all-MiniLM-L6-v2" / "onnx")}
    import platformdirs

    cache = Path(platformdirs.user_cache_dir("contextwarden")) / "eval-embeddings.sqlite"
    t0 = time.perf_counter()
    with eval_replayer("projects", None, ev.WINDOW, mem, ev.COMPACTION, embed_cache=cache) as rp:
        by_id = {s["sample_id"]: replay(rp, s) for s in samples}
        if not rp.flush():
            raise RuntimeError("memory ingestion did not settle")
        print(f"replayed {len(samples)} projects in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        rows = []
        off = MemorySection().other_sessions_weight
        weights = ([float(w) for w in args.weights.split(",")] if args.weights
                   else [MemorySection().project_weight, off])
        for n, weight in enumerate(weights):
            tag = "flat" if weight <= off else "project"
            rp.runtime.apply_overrides({"memory": {"project_weight": weight}})
            r = ask(rp, samples, by_id, args.questions, f"{tag}{n}")
            rows.append((tag, weight, sum(r) / max(1, len(r)), len(r)))
            print(f"  {tag} {weight}: recall {rows[-1][2]:.3f} ({len(r)} questions)", file=sys.stderr)
    names = ", ".join(s["sample_id"] for s in samples)
    print(f"\nLoCoMo as projects ({names}: one tenant, a session per LoCoMo session, questions in a new session "
          f"with no history; {time.perf_counter() - t0:.0f} s)")
    for tag, weight, recall, n in rows:
        what = "current project weighed above the rest" if tag == "project" else "no project preference"
        print(f"  {what:40} memory.project_weight {weight:.2f}: evidence recall {recall:.3f} ({n} questions)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
