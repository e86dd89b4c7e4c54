"""Retrieval benchmark: the memory stage's time per request with 100K stored chunks.

    .venv/bin/python bench/memory_bench.py --only query     # builds the 100K-chunk store once (storage bench)
    .venv/bin/python bench/retrieval_bench.py               # then this, on that store
    .venv/bin/python bench/retrieval_bench.py --queries 100 --history 80

The store is the one ``bench/memory_bench.py`` builds and keeps (4 tenants x 25K chunks of real texts:
LoCoMo / LongMemEval turns and Claude Code tool outputs); it is opened read-only, nothing is written to it.
The lexical (BM25) index is built from it as the memory service builds it at start-up.

Rows:

- **memory stage**: ``cw_request`` of the ``memory`` stage inside a real ``Pipeline.process`` (query
  construction, history exclusion, query embedding, BM25 and Chroma in parallel, fusion with the
  neighbour ranking, budget cut, injection), for callers whose tenant holds the most and the fewest of
  the 100K chunks, with a history of ``--history`` LoCoMo messages; each request asks a different real
  question (the query-embedding cache never helps).
- **Retriever.search over all 4 partitions**: the same retrieval over all 100K chunks (as a shared
  workspace that held everything would), without the stage around it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
SHARED = Path(os.environ.get("CONTEXTWARDEN_SHARED", ROOT.parent / "shared")).resolve()
MODEL_DIR = SHARED / "models" / "all-MiniLM-L6-v2" / "onnx"
EVAL = SHARED / "eval"
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))
os.environ.setdefault("CONTEXTWARDEN_MEMORY__MODEL_DIR", str(MODEL_DIR))
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from contextwarden.memory.embedder import Embedder  # noqa: E402
from contextwarden.memory.lexical import LexicalIndex  # noqa: E402
from contextwarden.memory.retrieve import Query, Retriever  # noqa: E402
from contextwarden.memory.service import CachedEmbedder  # noqa: E402
from contextwarden.memory.store import MemoryStore  # noqa: E402
from contextwarden.offline.memory.replay import Replayer  # noqa: E402
from contextwarden.settings.memory import MemorySection  # noqa: E402

TENANTS = ["t-alpha", "t-beta", "t-gamma", "t-delta"]  # bench/memory_bench.py's layout


def questions() -> list[str]:
    qs = [q["question"] for conv in json.load(open(EVAL / "locomo_dev.json")) for q in conv["qa"]]
    qs += [q["question"] for q in json.load(open(EVAL / "longmemeval_s_dev.json"))]
    return qs


def history(n: int) -> list[dict]:
    conv = json.load(open(EVAL / "locomo_dev.json"))[0]["conversation"]
    a = conv["speaker_a"]
    turns = [t for k in sorted((k for k in conv if k.startswith("session_") and isinstance(conv[k], list)),
                               key=lambda k: int(k.split("_")[1])) for t in conv[k]]
    msgs = [{"role": "user" if t["speaker"] == a else "assistant", "content": f"{t['speaker']}: {t['text']}"}
            for t in turns[:n]]
    if msgs and msgs[-1]["role"] == "user":
        msgs.pop()
    return msgs


def pct(xs, p) -> float:
    return float(np.percentile(np.asarray(xs), p)) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "cw-memory-bench"),
                    help="the store bench/memory_bench.py built (its --dir)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--history", type=int, default=40, help="messages of history in each request")
    a = ap.parse_args()
    path = Path(a.dir)
    if not (path / "built.json").exists():
        print(f"no benchmark store at {path}: run `.venv/bin/python bench/memory_bench.py --only query` first",
              file=sys.stderr)
        return 2
    print(f"store: {path} ({json.loads((path / 'built.json').read_text())})  cpus: {os.cpu_count()}  "
          f"load: {os.getloadavg()[0]:.2f}")
    emb = CachedEmbedder(Embedder(MODEL_DIR))
    store = MemoryStore(path, MemorySection(), emb, read_only=True)
    if not store.available:
        print(f"store unavailable: {store.error}", file=sys.stderr)
        return 1
    t = time.perf_counter()
    store.warm()
    warm_s = time.perf_counter() - t
    t = time.perf_counter()
    lexical = LexicalIndex()
    sizes = {}
    for tenant in TENANTS:
        sizes[tenant] = lexical.add(store.iter_items([tenant]))
    lex_s = time.perf_counter() - t
    total = len(lexical)
    print(f"{total:,} chunks ({', '.join(f'{k} {v:,}' for k, v in sizes.items())}); Chroma indexes warmed in "
          f"{warm_s:.1f} s; BM25 index built in {lex_s:.1f} s")

    allq = questions()
    random.Random(3).shuffle(allq)
    rows = []
    tenants = sorted(TENANTS, key=lambda k: -sizes[k])[:1] + sorted(TENANTS, key=lambda k: sizes[k])[:1]
    with tempfile.TemporaryDirectory() as tmp:
        prof = Path(tmp) / "bench.yaml"
        prof.write_text(textwrap.dedent("""\
            extends: claude-code
            memory: {timeout_ms: 2000}
            pipeline: {stage_budget_ms: 10000}
            """))
        rp = Replayer.from_profile(prof, Path(tmp) / "home")
        try:
            svc = rp.memory()
            own = svc.store, svc.lexical, svc.embedder
            svc.store, svc.lexical, svc.embedder = store, lexical, emb  # the 100K store, read-only
            hist = history(a.history)
            for k, tenant in enumerate(tenants):
                # each request asks a question not asked before (the query-embedding cache never helps)
                qs = allq[k * a.queries:(k + 1) * a.queries]
                for q in allq[-5:]:  # warm-up
                    rp.send(hist + [{"role": "user", "content": q}], tenant=tenant)
                stage, injected, skipped = [], [], {}
                parts: dict[str, list] = {"embed_ms": [], "lexical_ms": [], "vector_ms": [], "history_ms": [],
                                          "select_ms": []}
                for q in qs:
                    sent = rp.send(hist + [{"role": "user", "content": q}], tenant=tenant)
                    stage += [r["ms"] for r in sent.ctx.stage_results if r["stage"] == "memory"]
                    mem = sent.ctx.notes.get("memory") or {}
                    for key in parts:
                        if key in (mem.get("timings") or {}):
                            parts[key].append(mem["timings"][key])
                    injected.append(mem.get("injected") or 0)
                    if mem.get("skipped"):
                        skipped[mem["skipped"]] = skipped.get(mem["skipped"], 0) + 1
                rows.append((f"memory stage, tenant of {sizes[tenant]:,} chunks", pct(stage, 50), pct(stage, 99),
                             statistics.mean(injected)))
                for key, v in parts.items():
                    rows.append((f"  of which {key[:-3]}", pct(v, 50), pct(v, 99), None))
                if skipped:
                    print(f"{tenant}: requests without memory: {skipped}")
        finally:
            svc.store, svc.lexical, svc.embedder = own  # closing the runtime closes its own store only
            rp.close()

    r = Retriever(store, lexical, emb, None, MemorySection())
    ts, tv = [], []
    for q in allq[len(tenants) * a.queries:(len(tenants) + 1) * a.queries]:
        t = time.perf_counter()
        ret = r.search(Query(q), TENANTS)
        ts.append((time.perf_counter() - t) * 1000)
        tv.append(ret.timings.get("vector_ms", 0.0) + ret.timings.get("embed_ms", 0.0))
    rows.append((f"Retriever.search over all 4 partitions ({total:,} chunks)", pct(ts, 50), pct(ts, 99), None))
    rows.append(("  of which vector (embedding + 4 Chroma queries)", pct(tv, 50), pct(tv, 99), None))
    store.close()

    print(f"\n## Retrieval with {total:,} stored chunks ({a.queries} real questions per row, history of "
          f"{a.history} messages; load {os.getloadavg()[0]:.2f})\n")
    print(f"| {'case':<58} | p50 ms | p99 ms | items injected |")
    print(f"|{'-' * 60}|-------:|-------:|---------------:|")
    for name, p50, p99, inj in rows:
        print(f"| {name:<58} | {p50:6.2f} | {p99:6.2f} | {'' if inj is None else f'{inj:.1f}':>14} |")
    p50 = rows[0][1]
    print(f"\ntarget: memory stage p50 <= 25 ms: {'met' if p50 <= 25 else 'NOT met'} ({p50:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
