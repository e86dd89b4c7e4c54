"""``contextwarden search "…"``: hybrid search over the memory store, with sources and scores.

Shows, for each hit, where it comes from (tenant, session, message number, role, tool, time, memory id)
and why it ranked (the fused score and its vector and lexical ranks and scores). While a proxy runs on
this home, the search goes through its recall API (its model and index are loaded: milliseconds);
otherwise the store is opened read-only here (seconds: the model and the index are loaded first).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from ..memory.api import ApiError
from ..memory.embedder import load_embedder
from ..memory.lexical import LexicalIndex
from ..memory.retrieve import Hit, Query, Retriever
from ..memory.store import MemoryStore
from ..util.home import ensure_home, secret_file
from ..util.redact import tenant_id
from . import Fail
from ._common import ask_proxy, credential_from
from .memory import sealed_settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", description="Hybrid search over the memory store: vector (Chroma) and lexical (BM25) "
                                             "rankings fused by reciprocal rank fusion, with sources and scores.")
    p.add_argument("query", help="what to look for")
    p.add_argument("--session", help="only items of this session")
    p.add_argument("--limit", type=int, default=10, help="hits to show (default 10)")
    p.add_argument("--tenant", action="append", help="only this tenant's items (repeatable; default: every tenant)")
    p.add_argument("--api-key", help="only the items of the tenant this API key maps to")
    p.add_argument("--profile", default=None, help="profile (for the memory settings); default: the default profile")
    p.add_argument("--home", default=None, help="cw_home (default: $CONTEXTWARDEN_HOME or the user data dir)")
    p.add_argument("--full", action="store_true", help="print whole texts, not the first lines")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    home = ensure_home(args.home)
    if _through_proxy(args, home):
        return 0
    settings, sealer = sealed_settings(args.profile or "default", home, 2)
    t0 = time.perf_counter()
    embedder, message = load_embedder(settings.memory.model_dir, download=False)
    store = MemoryStore(home, settings.memory, embedder, read_only=True, sealer=sealer)
    if not store.available:
        raise Fail(f"memory store unavailable: {store.error}")
    try:
        tenants = list(args.tenant or [])
        if args.api_key:
            tenants.append(tenant_id(args.api_key, secret_file(home, "tenant.salt")))
        if not tenants:
            tenants = sorted((store.stats().get("tenants") or {}).keys())
        lexical = LexicalIndex()
        where = {"session": args.session} if args.session else None
        lexical.add(store.iter_items(tenants, where=where) if tenants else [])
        ms_open = (time.perf_counter() - t0) * 1000
        if not tenants or not len(lexical):
            print("memory is empty" + (f" for session {args.session}" if args.session else ""))
            return 0
        retriever = Retriever(store, lexical, embedder, None, settings.memory)
        keep = (lambda it: it.session != args.session) if args.session else None
        t1 = time.perf_counter()
        ret = retriever.search(Query(args.query), tenants, exclude=keep, n=max(args.limit * 3, settings.memory.candidates))
        ms = (time.perf_counter() - t1) * 1000
        hits = [_hit_dict(h) for h in ret.hits[: args.limit]]
        mode = ret.mode if embedder is not None else "lexical only: " + message
        _show(args, hits, f"{len(hits)} of {ret.candidates} candidates for {args.query!r} ({mode}; vector query "
                          f"{ret.vector_query!r}; {len(lexical):,} items indexed in {ms_open:.0f} ms, search {ms:.1f} ms)")
        return 0
    finally:
        store.close()


def _through_proxy(args: argparse.Namespace, home: Path) -> bool:
    """The search through the running proxy's recall API; False when no proxy runs (or it cannot answer)."""
    try:
        out = ask_proxy(home, credential_from(args), "search", query=args.query,
                        k=args.limit * (4 if args.session or args.tenant else 1))
    except ApiError as e:
        if e.status in (401, 403):
            raise Fail(f"contextwarden search: {e}") from None
        return False
    except OSError:
        return False
    if out is None:
        return False
    hits = [h for h in out.get("hits") or [] if (not args.session or h["session"] == args.session)
            and (not args.tenant or h["tenant"] in args.tenant)][: args.limit]
    _show(args, hits, f"{len(hits)} of {out.get('candidates')} candidates for {args.query!r} ({out.get('mode')}; "
                      f"through the running proxy, {out.get('ms')} ms)")
    return True


def _hit_dict(h: Hit) -> dict[str, Any]:
    """A hit of the local search as the recall API's ``search`` gives one (and where it came from)."""
    it = h.item
    return {**h.scores(), "id": it.memory_id, "tenant": it.tenant, "session": it.session, "turn": it.turn,
            "role": it.role, "kind": it.kind, "tool": it.tool, "ts": it.ts, "tags": it.tags, "source_id": it.source_id,
            "neighbour_of": h.neighbour_of, "text": it.text}


def _show(args: argparse.Namespace, hits: list[dict[str, Any]], heading: str) -> None:
    """The hits as JSON lines (``--json``), else the heading and each hit: scores, why, where from, text."""
    if args.json:
        for rank, h in enumerate(hits, 1):
            sys.stdout.write(orjson.dumps({"rank": rank, **h}).decode() + "\n")
        return
    print(heading)
    for rank, h in enumerate(hits, 1):
        v = f"{h['vector']:.3f} (#{h['vector_rank']})" if h.get("vector") is not None else "-"
        lx = f"{h['lexical']:.2f} (#{h['lexical_rank']})" if h.get("lexical") is not None else "-"
        # a hit that holds the query as written comes first, whatever its fused score (exact_first)
        why = ("  holds the query as written" if h.get("exact") else "") + (
            f" neighbour of {h['neighbour_of'].split(':')[-1][:8]}" if h.get("neighbour_of") else "")
        print(f"\n{rank:>2}. fused {h['fused']:.4f}  vector {v}  lexical {lx}{why}")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(h["ts"]))
        src = f"  from {h['source_id']}" if h.get("source_id") and h["source_id"] != h["id"] else ""
        tags = f"  tags {', '.join(h['tags'])}" if h.get("tags") else ""
        print(f"    {h['id']}  tenant {h['tenant']}  session {h['session']}  message #{h['turn']}  {h['role']}"
              f"{' ' + h['tool'] if h.get('tool') else ''}  {h['kind']}  {when}{src}{tags}")
        text = h["text"] if args.full else "\n".join(h["text"].strip().splitlines()[:4])[:400]
        for line in text.splitlines():
            print(f"    | {line}")
