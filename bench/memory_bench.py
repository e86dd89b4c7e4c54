"""Memory storage benchmark: query embedding latency, ingestion throughput, vector_query at 100K chunks.

    .venv/bin/python bench/memory_bench.py                 # all three (the 100K store is built once, cached)
    .venv/bin/python bench/memory_bench.py --only embed    # embed | ingest | query | startup
    .venv/bin/python bench/memory_bench.py --rebuild       # rebuild the 100K store

Texts are real: LoCoMo / LongMemEval questions and turns and Claude Code tool outputs from ../shared/eval
(read only). Embedding 100K chunks takes hours on 2 busy cores (~0.6 ms of CPU a token), so by default
``--real`` (4K) chunks are embedded by the model and the rest get vectors mixed from those (0.75 a +
0.25 b + noise, normalised) with real texts; ``--real 100000`` embeds all of them.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
SHARED = Path(os.environ.get("CONTEXTWARDEN_SHARED", ROOT.parent / "shared")).resolve()
MODEL_DIR = SHARED / "models" / "all-MiniLM-L6-v2" / "onnx"
EVAL = SHARED / "eval"
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from contextwarden.core.events import EventBus  # noqa: E402
from contextwarden.memory.chunking import chunk_text  # noqa: E402
from contextwarden.memory.embedder import Embedder  # noqa: E402
from contextwarden.memory.ingest import Ingestor  # noqa: E402
from contextwarden.memory.items import MemoryItem  # noqa: E402
from contextwarden.memory.store import MemoryStore  # noqa: E402
from contextwarden.settings.memory import MemorySection  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000.0, p))


# --- corpora ----------------------------------------------------------------------------------------------
def questions() -> list[str]:
    qs = [q["question"] for conv in json.load(open(EVAL / "locomo_dev.json")) for q in conv["qa"] if "question" in q]
    qs += [q["question"] for q in json.load(open(EVAL / "longmemeval_s_dev.json"))]
    return qs


def conversation_pieces() -> list[str]:
    """Turns of LongMemEval (cut into paragraphs) and LoCoMo: chunk-sized real texts."""
    out: list[str] = []
    for q in json.load(open(EVAL / "longmemeval_s_dev.json")):
        for sess in q["haystack_sessions"]:
            for t in sess:
                out += [p.strip() for p in re.split(r"\n\s*\n", t["content"]) if len(p.strip()) >= 40]
    for conv in json.load(open(EVAL / "locomo_dev.json")):
        c = conv["conversation"]
        for k, v in c.items():
            if k.startswith("session_") and isinstance(v, list):
                out += [f"{t['speaker']}: {t['text']}" for t in v if t.get("text")]
    return list(dict.fromkeys(out))


def tool_outputs() -> list[str]:
    """Tool results from the Claude Code traces (file reads, shell output, search results)."""
    out: list[str] = []
    for f in sorted(glob.glob(str(EVAL / "traces" / "*.jsonl"))):
        for line in open(f):
            try:
                m = json.loads(line).get("message") or {}
            except json.JSONDecodeError:
                continue
            c = m.get("content") if isinstance(m, dict) else None
            for b in c if isinstance(c, list) else []:
                if isinstance(b, dict) and b.get("type") == "tool_result":
                    cc = b.get("content")
                    s = cc if isinstance(cc, str) else "\n".join(x.get("text", "") for x in cc or [] if isinstance(x, dict))
                    if s.strip():
                        out.append(s)
    return out


# --- 1. query embedding -----------------------------------------------------------------------------------
def bench_embed(emb: Embedder, n: int) -> None:
    from chromadb.utils.embedding_functions.onnx_mini_lm_l6_v2 import ONNXMiniLM_L6_V2

    chroma = ONNXMiniLM_L6_V2()  # what chromadb's DefaultEmbeddingFunction runs
    chroma.DOWNLOAD_PATH = MODEL_DIR.parent
    qs = questions()
    random.Random(1).shuffle(qs)
    qs = qs[:n]
    toks = [len(emb._tok.encode(q).ids) for q in qs]
    rows = []
    for name, fn in (("contextwarden Embedder (dynamic padding, 1 thread)", emb),
                     (f"chroma DefaultEmbeddingFunction (pads to 256, {os.cpu_count()} threads)", chroma)):
        for q in qs[:5]:
            fn([q])
        ts, cpu = [], []
        for q in qs:
            t, c = time.perf_counter(), time.process_time()
            fn([q])
            ts.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        rows.append((name, pct(ts, 50), pct(ts, 99), pct(cpu, 50)))
    print(f"\n## Query embedding ({len(qs)} real questions, median {int(np.median(toks))} tokens)\n")
    print(f"| {'embedder':<58} | p50 ms | p99 ms | CPU ms p50 |")
    print(f"|{'-' * 60}|-------:|-------:|-----------:|")
    for name, p50, p99, c50 in rows:
        print(f"| {name:<58} | {p50:6.2f} | {p99:6.2f} | {c50:10.2f} |")
    a = emb(qs[:50])
    b = np.asarray(chroma(qs[:50]))
    print(f"\nsame vectors: min cosine {float((a * b).sum(1).min()):.6f} over 50 queries")


# --- 2. ingestion throughput ------------------------------------------------------------------------------
def bench_ingest(emb: Embedder, limit_chunks: int) -> None:
    settings = MemorySection()
    counter = emb.token_counter()
    items, nchunks = [], 0
    for i, text in enumerate(tool_outputs()):
        nchunks += len(chunk_text(text, settings.chunk_tokens, counter))
        items.append(MemoryItem(text=text, session=f"s{i % 7}", tenant="t-bench", turn=i, role="tool",
                                kind="tool_result", tool="Bash"))
        if nchunks >= limit_chunks:
            break
    with tempfile.TemporaryDirectory() as d:
        store = MemoryStore(Path(d), MemorySection(), emb)
        ing = Ingestor(store, EventBus(recent=100_000), chunk_tokens=settings.chunk_tokens, count=counter,
                       backfill=False)
        t, c = time.perf_counter(), time.process_time()
        for k in range(0, len(items), 20):  # turn-sized submissions, as the memory stage makes them
            ing.submit(items[k:k + 20])
        ing.flush(3600)
        dt, cpu = time.perf_counter() - t, time.process_time() - c
        ing.close()
        store.close()
    chars = sum(len(it.text) for it in items)
    print(f"\n## Ingestion (redact + chunk + embed + Chroma add; {len(items)} Claude Code tool outputs, "
          f"{chars / 1e6:.2f} MB, {nchunks} chunks of <= {settings.chunk_tokens} model tokens)\n")
    print(f"{dt:.1f} s, CPU {cpu:.1f} s: {nchunks / dt:.1f} chunks/s")
    # a line longer than a chunk (a minified file, a JSON dump): the chunker's time against one tokenisation of it
    line = ",".join(json.dumps({"id": i, "path": f"src/pkg{i % 7}/mod_{i}.py", "ok": i % 3 == 0}) for i in range(2000))
    t = time.perf_counter()
    n = len(chunk_text(line, settings.chunk_tokens, counter))
    cut = time.perf_counter() - t
    t = time.perf_counter()
    emb._counter.encode(line, add_special_tokens=False)
    once = time.perf_counter() - t
    print(f"\none line of {len(line) / 1e3:.0f} KB cut into {n} chunks: {cut * 1e3:.0f} ms, {cut / once:.1f}x one tokenisation of it")
    short = conversation_pieces()[:512]
    t = time.perf_counter()
    emb(short)
    dt = time.perf_counter() - t
    print(f"\nembedding alone, {len(short)} conversation turns/paragraphs: {len(short) / dt:.0f} texts/s")


# --- 2b. lexical index at start-up ---------------------------------------------------------------------------
def bench_startup(emb: Embedder, path: Path) -> None:
    """What the memory service does at start-up for BM25, on the 100K store: a rebuild from Chroma (no
    snapshot, or a stale one), or the snapshot saved at the previous shutdown."""
    from contextwarden.memory.lexical import LexicalIndex, load_snapshot, save_snapshot

    store = MemoryStore(path, MemorySection(), emb)
    t = time.perf_counter()
    key = store.fingerprint()
    idx = LexicalIndex()
    batch = []
    for it in store.iter_items():  # what MemoryService._rebuild_lexical does
        batch.append(it)
        if len(batch) >= 2000:
            idx.add(batch)
            batch = []
    idx.add(batch)
    rebuild = time.perf_counter() - t
    snap = path.parent / f"{path.name}-lexical.npz"
    t = time.perf_counter()
    save_snapshot(idx, snap, key)
    save = time.perf_counter() - t
    t = time.perf_counter()
    loaded = load_snapshot(snap, store.fingerprint())
    load = time.perf_counter() - t
    assert loaded is not None and len(loaded) == len(idx)
    q = "deploy script staging host"
    same = [h.item.id for h in idx.query(q, TENANTS, 20)] == [h.item.id for h in loaded.query(q, TENANTS, 20)]
    store.close()
    print(f"\n## Lexical (BM25) index at start-up, {len(idx)} items\n")
    print("| | seconds |")
    print("|---|---:|")
    print(f"| rebuilt from Chroma | {rebuild:.1f} |")
    print(f"| loaded from the snapshot ({snap.stat().st_size / 1e6:.0f} MB, saved in {save:.1f} s at shutdown) | {load:.2f} |")
    print(f"\nspeed-up {rebuild / load:.0f}x; same top-20 for a query: {same}")


# --- 3. vector_query at 100K ------------------------------------------------------------------------------
TENANTS = ["t-alpha", "t-beta", "t-gamma", "t-delta"]


def tenant_of(j: int) -> str:
    """85% of the chunks are one tenant's (a single user's proxy: the hard case), 5% each the others'."""
    r = j % 20
    return TENANTS[0] if r < 17 else TENANTS[r - 16]


def build_store(emb: Embedder, path: Path, total: int, real: int) -> None:
    pieces = conversation_pieces()
    for t in tool_outputs():
        pieces += chunk_text(t, 400)  # the store was built with the old chunk size; kept for comparability
    pieces = list(dict.fromkeys(p for p in pieces if p.strip()))
    random.Random(0).shuffle(pieces)
    real = min(real, total, len(pieces))
    print(f"building {total} chunks in {path} ({real} embedded by the model, {total - real} derived) ...", flush=True)
    t0 = time.perf_counter()
    cache = path.parent / f"{path.name}-vectors-{real}.npy"  # the slow part, kept across rebuilds
    if cache.exists():
        base = np.load(cache)
    else:
        base = emb(pieces[:real])
        np.save(cache, base)
    print(f"  embedded {real} in {time.perf_counter() - t0:.0f} s", flush=True)
    rng = np.random.default_rng(0)
    store = MemoryStore(path, MemorySection(), emb)
    now = time.time()
    step = 5000
    for start in range(0, total, step):
        idx = range(start, min(total, start + step))
        items, vecs = [], []
        for j in idx:
            if j < real:
                text, v = pieces[j], base[j]
            else:
                a, b = rng.integers(0, real, 2)
                text = f"{pieces[j % len(pieces)]} (#{j})"
                v = 0.75 * base[a] + 0.25 * base[b] + rng.normal(0, 0.03, base.shape[1]).astype(np.float32)
                v = v / np.linalg.norm(v)
            items.append(MemoryItem(text=text, session=f"s{j % 500}", tenant=tenant_of(j), turn=j % 300,
                                    role="tool" if j % 3 == 0 else "user", kind="chunk" if j % 3 == 0 else "message",
                                    tool="Bash" if j % 3 == 0 else None, ts=now - (j % 1000) * 60))
            vecs.append(v)
        store.add(items, embeddings=np.asarray(vecs, dtype=np.float32))
        print(f"  {min(total, start + step)} stored ({time.perf_counter() - t0:.0f} s)", flush=True)
    store.close()


def bench_query(emb: Embedder, path: Path, total: int, real: int, rebuild: bool, n: int) -> None:
    marker = path / "built.json"
    want = {"total": total, "real": real, "layout": "partition per tenant, 85/5/5/5"}
    if rebuild or not marker.exists() or json.loads(marker.read_text()) != want:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        build_store(emb, path, total, real)
        marker.write_text(json.dumps(want))
    store = MemoryStore(path, MemorySection(), emb)
    t = time.perf_counter()
    warmed = store.warm()
    warm_s = time.perf_counter() - t
    count = store.count()
    qs = questions()
    random.Random(2).shuffle(qs)
    qs = qs[:n]
    vecs = emb(qs)
    rows = []
    cases = [("1 tenant (85% of items), precomputed query vector", [TENANTS[0]], True, None),
             ("1 tenant, query embedded inside vector_query", [TENANTS[0]], False, None),
             ("1 tenant + where session != current", [TENANTS[0]], True, {"session": {"$ne": "s1"}}),
             ("4 tenants (4 partitions, all 100%)", TENANTS, True, None),
             ("small tenant (5%)", [TENANTS[1]], True, None)]
    for name, tenants, pre, where in cases:
        nq = len(qs) if where is None else min(len(qs), 20)  # a where costs a metadata scan: fewer runs
        for k in range(5):
            store.vector_query(qs[k], tenants, 20, where=where, query_embedding=vecs[k] if pre else None)
        ts, cpu, got = [], [], 0
        for k, q in enumerate(qs[:nq]):
            t, c = time.perf_counter(), time.process_time()
            hits = store.vector_query(q, tenants, 20, where=where, query_embedding=vecs[k] if pre else None)
            ts.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            got += len(hits)
            assert all(h.tenant in tenants for h, _ in hits)
        rows.append((name, pct(ts, 50), pct(ts, 99), pct(cpu, 50), got / nq))
    store.close()
    print(f"\n## MemoryStore.vector_query, n=20, {count} stored chunks in {len(TENANTS)} tenant partitions "
          f"({len(qs)} real questions; warm-up of {warmed} indexes {warm_s:.1f} s)\n")
    print(f"| {'case':<52} | p50 ms | p99 ms | CPU ms p50 | hits |")
    print(f"|{'-' * 54}|-------:|-------:|-----------:|-----:|")
    for name, p50, p99, c50, hits in rows:
        print(f"| {name:<52} | {p50:6.2f} | {p99:7.2f} | {c50:10.2f} | {hits:4.0f} |")
    print("\n(wall-clock figures include waiting for a CPU on a shared machine; CPU ms is the process's own"
          " CPU time, all threads)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["embed", "ingest", "query", "startup"])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--ingest-chunks", type=int, default=300, help="chunks to ingest for the throughput figure")
    ap.add_argument("--chunks", type=int, default=100_000, help="size of the store for the query figure")
    ap.add_argument("--real", type=int, default=4_000, help="how many of them the model embeds")
    ap.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "cw-memory-bench"),
                    help="where the query-benchmark store is built once and reused")
    ap.add_argument("--rebuild", action="store_true")
    a = ap.parse_args()
    emb = Embedder(MODEL_DIR)
    print(f"model: {MODEL_DIR}  cpus: {os.cpu_count()}  load average at start: {os.getloadavg()[0]:.2f}")
    if a.only in (None, "embed"):
        bench_embed(emb, a.queries)
    if a.only in (None, "ingest"):
        bench_ingest(emb, a.ingest_chunks)
    if a.only in (None, "query", "startup"):
        if a.only == "startup" and not (Path(a.dir) / "built.json").exists():
            a.only = None  # build it through the query benchmark first
        if a.only != "startup":
            bench_query(emb, Path(a.dir), a.chunks, a.real, a.rebuild, a.queries)
        bench_startup(emb, Path(a.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
