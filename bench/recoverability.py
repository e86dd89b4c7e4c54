"""Recoverability on the eval traces: is what clearing and compaction took out, and the model used next,
retrievable by the id its stub names, found by a search for the reference the model used, and put back
by automatic recall in the very next request, at what cost?

    .venv/bin/python bench/recoverability.py                       # every trace of ../shared/eval/traces
    .venv/bin/python bench/recoverability.py TRACE --profile claude-code-conservative
    .venv/bin/python bench/recoverability.py TRACE --no-search     # skip (b): no waiting for ingestion

Each trace is replayed through the real pipeline with a kept cw_home (turn hooks on, so memory ingests
as it would live). The fidelity measure (``contextwarden.offline.fidelity``) lists every lost item: an edit
source or a reference the model's recorded next answer used that the client's body held in a tool result
and ours did not. For each one, with the replay's runtime still open:

(a) **by id**: the id the stub names (a cleared result: the memory id of its text) or the ids a compaction
    summary names (its folded spans, and each compacted tool result, kept under its own id): does
    ``recall`` of that id return a text that holds the item (the same test the fidelity measure uses)?
(b) **by search**: ``search(reference, k=3)`` (the recall API's and MCP tool's hybrid search, after
    ingestion settled): does a top-3 hit, or the whole original it was cut from, hold the item? The query
    is the reference itself, or an edit source's ``old_string``.
(c) **automatic recall**: of the items a request lost, the share the recall stage injected into the next
    request of the same conversation, and what its injections cost (their tokens billed as new input,
    against the cost of what we sent). Also the share the next request held anywhere (a recalled block,
    memory, or the new tool result of a re-read).

Also, as before: every id a stub or summary named came back, byte for byte.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CONTEXTWARDEN_SHARED", ROOT.parent / "shared")).resolve()
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))
os.environ.setdefault("CONTEXTWARDEN_MEMORY__MODEL_DIR", str(SHARED / "models" / "all-MiniLM-L6-v2" / "onnx"))
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import orjson  # noqa: E402

from contextwarden.cli.replay_run import parse_sets  # noqa: E402
from contextwarden.memory.ids import memory_id  # noqa: E402
from contextwarden.offline.fidelity import BodyIndex, Indexer, _lines  # noqa: E402
from contextwarden.offline.replay import replay  # noqa: E402
from contextwarden.wire.conversation import result_text  # noqa: E402
from contextwarden.wire.cost import price_for  # noqa: E402

MID = re.compile(r"\bm-[0-9a-f]{16}\b")
ITEMS = "recoverability-items.json"  # in a --keep-home: the lost items, for --search-from


def holds(ix: Indexer, text: str, item: dict) -> bool:
    """The fidelity measure's test: the text holds the lost edit source / reference."""
    ti = ix.text(text)
    b = BodyIndex(ti.lines, ti.tokens)
    return b.has_source(_lines(item["what"])) if item["kind"] == "source" else b.has_ref(item["what"])


def result_texts(body: dict) -> dict[str, str]:
    out = {}
    for m in body.get("messages") or []:
        c = m.get("content")
        for b in c if isinstance(c, list) else ():
            if isinstance(b, dict) and b.get("type") == "tool_result":
                out[str(b.get("tool_use_id"))] = result_text(b.get("content"))
    return out


def summary_ids(body: dict) -> list[str]:
    """The ids the compaction summary of a body names (the first user message, when it is one)."""
    msgs = body.get("messages") or []
    for m in msgs[:2]:
        c = m.get("content")
        for b in c if isinstance(c, list) else [{"type": "text", "text": c}]:
            t = b.get("text") if isinstance(b, dict) else None
            if isinstance(t, str) and t.startswith("[contextwarden: summary"):
                return MID.findall(t)
    return []


class Measure:
    """What one trace's replay shows, computed with its runtime still open."""

    def __init__(self, search: bool, k: int = 3, show_misses: bool = False, keep: str | None = None) -> None:
        self.search, self.k, self.show_misses, self.keep = search, k, show_misses, keep
        self.items: list[dict] = []  # every lost item (request, kind, what, tool)
        self.ix = Indexer()
        self.by_id = Counter()
        self.by_search = Counter()
        self.misses: list[str] = []
        self.printed = 0
        self.sent_bodies: dict[int, list[str]] = {}  # request index -> the summary ids of what we sent

    def __call__(self, rt, rep) -> None:
        from contextwarden.memory import service as memory_service

        svc = memory_service.get_service(rt)
        if svc is None:
            raise SystemExit("memory is off in this profile: nothing to recall")
        self.print_misses()
        svc.flush_kept(60)
        tenants = svc.tenants()
        ws = rt.settings.memory.shared_workspace
        if self.search:
            settle(svc)
        for r, req in zip(rep.results, rep.trace.requests):
            f = r.fidelity
            if not f or not f.items:
                continue
            results = result_texts(req.body)
            for it in f.items:
                kind = it["kind"]
                self.by_id[kind + " lost"] += 1
                ids = []
                if it["tool_use_id"] in results:
                    ids.append(memory_id(results[it["tool_use_id"]]))
                ids += self.sent_bodies.get(r.index, [])
                got = svc.recall(ids, tenants, ws, wait_s=0, chunks=False) if ids else []
                if any(holds(self.ix, g.text, it) for g in got):
                    self.by_id[kind + " found"] += 1
                else:
                    self.misses.append(f"#{r.index} by id {it['stage']} {it['tool']}: {it['what'][:60]!r}")
                self.items.append({"request": r.index, "kind": kind, "what": it["what"], "tool": it["tool"]})
                if self.search:
                    self.search_one(svc, tenants, ws, self.items[-1])
        self.print_misses()
        if self.keep is not None:  # for --search-from: (b) again on this store, without replaying
            Path(self.keep, ITEMS).write_bytes(orjson.dumps(self.items))

    def search_one(self, svc, tenants: list[str], ws: str | None, it: dict) -> bool:
        """(b) for one lost item: does a top-k hit of a search for it, or the original a hit was cut
        from, hold it? A miss lists the deeper hits (rank, holds, scores) when misses are shown."""
        kind = it["kind"]
        hits = svc.search_hits(it["what"][:2000], tenants, k=self.k, workspace=ws)["hits"]
        at = next((i for i, h in enumerate(hits, start=1) if holds(self.ix, h["text"], it)), None)
        if at is None:
            whole = {g.source_id: g for g in svc.recall([h["source_id"] for h in hits], tenants, ws, wait_s=0, chunks=False)}
            at = next((i for i, h in enumerate(hits, start=1)
                       if h["source_id"] in whole and holds(self.ix, whole[h["source_id"]].text, it)), None)
        self.by_search[kind + " lost"] += 1
        if at is not None:
            self.by_search[kind + " found"] += 1
            if at > 1:  # a near miss: found, but not first
                self.misses.append(f"#{it['request']} search found at rank {at} {it['tool']}: {it['what'][:60]!r}")
            return True
        self.misses.append(f"#{it['request']} search {it['tool']}: {it['what'][:60]!r}")
        if self.show_misses:
            deep = svc.search_hits(it["what"][:2000], tenants, k=30, workspace=ws)["hits"]
            for rank, h in enumerate(deep, start=1):
                scores = {k: v for k, v in h.items() if k in ("fused", "vector", "lexical", "vector_rank", "lexical_rank")}
                self.misses.append(f"    {rank}. holds={holds(self.ix, h['text'], it)} {h['kind']} {h['tool']} {scores} "
                                   f"{h['text'][:90]!r}")
        return False

    def print_misses(self) -> None:
        """Printed while the runtime is open: closing it waits for the ingestion batch in progress
        (minutes on a busy machine); (c)'s before the wait for ingestion that (b) needs."""
        for line in self.misses[self.printed:] if self.show_misses else ():
            print("  miss " + line, flush=True)
        self.printed = len(self.misses)


def search_from(root: Path, profile: str | None, show_misses: bool) -> int:
    """(b) again on the memory of a --keep-home run (each DIR/<trace> holding the lost items), with the
    code as it is now: to try a change of the search without replaying and ingesting the trace again."""
    from contextwarden.core.runtime import Runtime
    from contextwarden.memory import service as memory_service
    from contextwarden.settings import load_settings

    homes = [root] if (root / ITEMS).exists() else sorted(p.parent for p in root.glob("*/" + ITEMS))
    if not homes:
        raise SystemExit(f"no {ITEMS} under {root}: replay with --keep-home first")
    print("| trace | (b) search top 3 |\n| --- | --- |")
    for home in homes:
        rt = Runtime(load_settings(profile or "default", home), home, None, profile=profile or "default", log=False)
        try:
            svc = memory_service.get_service(rt)
            if svc is None:
                raise SystemExit("memory is off in this profile")
            svc.ready.wait(600)
            deadline = time.monotonic() + 600
            while not svc.lexical_ready and time.monotonic() < deadline:
                time.sleep(0.1)
            m = Measure(search=True, show_misses=show_misses)
            for it in orjson.loads((home / ITEMS).read_bytes()):
                m.search_one(svc, svc.tenants(), rt.settings.memory.shared_workspace, it)
            m.print_misses()
            found = m.by_search["source found"] + m.by_search["ref found"]
            print(f"| {home.name[12:20] if home.name.startswith('claude-code-') else home.name} "
                  f"| {pct(found, m.by_search['source lost'] + m.by_search['ref lost'])} |", flush=True)
        finally:
            rt.close()
    return 0


def settle(svc) -> None:
    """Wait until every ingested turn is indexed (a search before that misses what is still queued),
    saying how much is left now and then. The ingestion thread yields to the request path (its nice value
    5 above the process's); the replay is over, there is none: it runs at the process's own."""
    if svc.ingestor is None:
        return
    t0 = time.monotonic()
    th = getattr(svc.ingestor, "_thread", None)
    if th is not None and th.native_id is not None:
        try:
            os.setpriority(os.PRIO_PROCESS, th.native_id, os.getpriority(os.PRIO_PROCESS, 0))
        except (AttributeError, OSError):
            pass
    print(f"  waiting for ingestion to settle (search needs the indexed turns): {svc.ingestor.pending} pending ...",
          file=sys.stderr, flush=True)
    while not svc.flush(300):
        print(f"  ... {svc.ingestor.pending} pending after {(time.monotonic() - t0) / 60:.0f} min", file=sys.stderr, flush=True)
    print(f"  ingestion settled in {(time.monotonic() - t0) / 60:.1f} min", file=sys.stderr, flush=True)


def pct(a: int, b: int) -> str:
    return f"{a}/{b} ({100 * a / b:.1f}%)" if b else "0/0"


def main() -> int:
    traces = sorted(str(p) for p in (SHARED / "eval" / "traces").glob("*.jsonl"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traces", nargs="*", default=traces)
    ap.add_argument("--profile", default=None, help="default: the default profile")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--no-search", action="store_true", help="skip (b): no waiting for ingestion")
    ap.add_argument("--misses", action="store_true", help="list what was not found")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--json-out", default=None, help="also write the replays' reports (as bench/replay_bench.py does)")
    ap.add_argument("--keep-home", default=None, metavar="DIR",
                    help="replay into DIR/<trace> and keep it (its memory and the lost items) for --search-from")
    ap.add_argument("--search-from", default=None, metavar="DIR",
                    help="only (b), on the memory a --keep-home run left in DIR: no replay, no ingestion (minutes, not an hour)")
    args = ap.parse_args()
    if args.search_from:
        return search_from(Path(args.search_from), args.profile, args.misses)

    rows = []
    reports = []
    for trace in args.traces:
        name = Path(trace).name
        print(f"replaying {name} ...", file=sys.stderr, flush=True)
        keep = None
        if args.keep_home:
            keep = Path(args.keep_home) / Path(trace).stem
            keep.mkdir(parents=True, exist_ok=True)
        m = Measure(search=not args.no_search, show_misses=args.misses, keep=str(keep) if keep else None)
        recall_tokens = Counter()
        ids_named: dict[str, str] = {}
        recall_events: list[dict] = []  # the recall events of the request being replayed
        import contextwarden.core.runtime as runtime_mod

        orig_init = runtime_mod.Runtime.__init__

        def init(self, *a, **kw):  # listen to the replay's runtime
            orig_init(self, *a, **kw)

            def on(ev):
                d = ev.data or {}
                if ev.type == "clearing":
                    ids_named.update({i: "cleared" for i in d.get("ids") or []})
                elif ev.type == "compaction" and d.get("folded"):
                    ids_named.update({i: "compacted" for i in d["folded"]})
                elif ev.type == "recall" and d.get("injected"):
                    recall_events.append(d)
                    recall_tokens[ev.flow_id] += int(d.get("tokens") or 0)
            self.bus.subscribe(on)

        # the ids each sent body's summary names, by request (a lost item that was compacted away is in them)
        import contextwarden.offline.fidelity as fidelity_mod

        orig_request = fidelity_mod.FidelityCounter.request
        orig_put_back = fidelity_mod.FidelityCounter._put_back
        seen = [0]

        def request(self, original, sent, *a, **kw):
            if sent is not None:
                ids = summary_ids(sent)
                if ids:
                    m.sent_bodies[seen[0]] = ids
            try:
                return orig_request(self, original, sent, *a, **kw)
            finally:
                seen[0] += 1
                recall_events.clear()

        def put_back(self, fid, items, answer, sent, recalled):
            orig_put_back(self, fid, items, answer, sent, recalled)
            if not args.misses:
                return
            for it in items:  # (c) one item at a time: which ones the recall stage did not put back, and why
                one = fidelity_mod.Fidelity()
                orig_put_back(self, one, [it], answer, sent, recalled)
                if not one.back:
                    ev = recall_events[-1] if recall_events else {}
                    why = ev.get("skipped") or f"injected {ev.get('why')} {[str(r)[:40] for r in ev.get('refs') or []]}"
                    m.misses.append(f"#{seen[0]} auto-recall {it['kind']} {it['stage']} {it['tool']}: {it['what'][:60]!r}"
                                    f" (present anyway: {bool(one.present)}; recall: {why})")

        if not m.search and not keep:
            # nothing will be searched and the home is thrown away: closing does not wait for the embedding
            # batch in progress (on a loaded machine that wait was most of a run's time)
            from contextwarden.memory.store import MemoryStore

            orig_close = MemoryStore.close
            MemoryStore.close = lambda self, timeout=None: orig_close(self, 5.0)
        import contextwarden.plugins.recall as recall_plugin

        orig_auto = recall_plugin.auto_recall

        def auto(ctx, svc):  # what the stage decided, also when it emits nothing (nothing kept, nothing injected)
            got = orig_auto(ctx, svc)
            if not got.get("injected"):
                recall_events.append(got)
            return got

        recall_plugin.auto_recall = auto
        runtime_mod.Runtime.__init__ = init
        fidelity_mod.FidelityCounter.request = request
        fidelity_mod.FidelityCounter._put_back = put_back
        try:
            with (contextlib.nullcontext(str(keep)) if keep else tempfile.TemporaryDirectory()) as tmp:
                rep = replay(trace, args.profile, home=tmp, limit=args.limit, overrides=parse_sets(args.sets) or None,
                             stage_budget_ms=5000, before_close=m)
                # every id named came back whole (the original kept under it)
                from contextwarden.memory.originals import OriginalStore

                store = OriginalStore(tmp, read_only=True)
                found = {it.source_id: it for it in store.get(list(ids_named), store.tenants())} if ids_named else {}
                exact = sum(1 for i, it in found.items() if memory_id(it.text) == i)
                store.close()
        finally:
            runtime_mod.Runtime.__init__ = orig_init
            if not m.search and not keep:
                MemoryStore.close = orig_close
            fidelity_mod.FidelityCounter.request = orig_request
            recall_plugin.auto_recall = orig_auto
            fidelity_mod.FidelityCounter._put_back = orig_put_back
        reports.append(rep)
        if args.json_out:
            import orjson

            Path(args.json_out).write_bytes(orjson.dumps([r.to_dict() for r in reports]))
        t = rep.totals()
        fid = t["fidelity"]
        model = rep.trace.requests[0].body.get("model") if rep.trace.requests else None
        factor = rep.trace.fit["b"] if rep.trace.fit else 1.0
        rtok = sum(recall_tokens.values())
        recall_usd = rtok * factor * price_for(model).input / 1e6
        rows.append((name[12:20] if name.startswith("claude-code-") else name, t, fid, m, len(ids_named), len(found), exact,
                     rtok, recall_usd))

    print("| trace | lost edit sources / refs | (a) by the stub's id | (b) search top 3 | (c) auto-recall put back next request | held anywhere next request | recall tokens | recall cost | ids named found (byte for byte) |")
    print("| --- | --- | --- | --- | --- | --- | ---: | ---: | --- |")
    for name, t, fid, m, named, found, exact, rtok, usd in rows:
        a = pct(m.by_id["source found"] + m.by_id["ref found"], m.by_id["source lost"] + m.by_id["ref lost"])
        b = pct(m.by_search["source found"] + m.by_search["ref found"],
                m.by_search["source lost"] + m.by_search["ref lost"]) if m.search else "-"
        print(f"| {name} | {fid['sources_lost']} / {fid['refs_lost']} | {a} | {b} | {pct(fid['back'], fid['back_of'])} "
              f"| {pct(fid['present'], fid['back_of'])} | {rtok:,} | ${usd:.2f} ({100 * usd / max(1e-9, t['cost_ours']):.2f}%) "
              f"| {found}/{named} ({exact}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
