"""``contextwarden sessions``, ``contextwarden stats`` and ``contextwarden memory export|import|prune|delete``.

They work on the memory store of ``--home`` (or ``$CONTEXTWARDEN_HOME``), or on the Chroma server the
profile's ``memory.chroma_url`` names. A local store has one writer process: while a proxy runs on the
same home, import and delete go through its recall API (:mod:`contextwarden.memory.api`), prune refuses;
the read commands work on a snapshot.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..memory.embedder import load_embedder
from ..memory.store import MemoryStore
from ..settings import Settings, SettingsError, load_settings
from ..util.home import ensure_home
from ..util.sealing import Sealer, SealError
from . import Fail
from ._common import add_home_profile, ask_proxy, credential_from, home_of

ONE_WRITER = ("A local store (cw_home/chroma) allows one writer process: while a proxy runs on this home, import "
              "and delete go through it; stop it before prune, or share a Chroma server through memory.chroma_url.")


def register(sub) -> None:
    def command(subs, name: str, func, **kw) -> argparse.ArgumentParser:
        p = subs.add_parser(name, **kw)
        add_home_profile(p)
        p.set_defaults(func=func)
        return p

    p = command(sub, "sessions", cmd_sessions)
    p.add_argument("--tenant", help="only this tenant")
    p.add_argument("--limit", type=int, default=50, help="newest N sessions (0: all)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    command(sub, "stats", cmd_stats).add_argument("--json", action="store_true")

    m = sub.add_parser("memory", description="Manage long-term memory. " + ONE_WRITER)
    msub = m.add_subparsers(dest="memory_command", metavar="ACTION")
    m.set_defaults(func=lambda args: (m.print_help(), 2)[1])
    command(msub, "export", cmd_export, help="write every item to a JSONL file (- for stdout); no vectors").add_argument("file")
    command(msub, "import", cmd_import, help="add the items of a JSONL export (re-embedded, deduplicated)",
            description="Add the items of a JSONL export. " + ONE_WRITER).add_argument("file")
    command(msub, "prune", cmd_prune, help="delete items older than the TTL (memory.ttl_days, or --days)",
            description="TTL expiry. " + ONE_WRITER).add_argument(
        "--days", type=float, default=None, help="age limit in days (default: the profile's memory.ttl_days)")
    d = command(msub, "delete", cmd_delete, help="forget one session", description="Forget a session. " + ONE_WRITER)
    d.add_argument("--session", required=True)
    d.add_argument("--tenant", default=None, help="only this tenant's items of the session")


def sealed_settings(profile: str, home: Path, code: int = 1) -> tuple[Settings, Sealer]:
    """The profile's settings and what seals the stored documents (when a key is set), else :class:`Fail`
    (with ``code``) saying why not."""
    try:
        settings = load_settings(profile, home)
        return settings, settings.state.sealer()
    except (SettingsError, SealError) as e:
        raise Fail(str(e), code) from None


def _open(args, write: bool = False, embed: bool = False) -> tuple[MemoryStore, Settings]:
    """(store, settings), else :class:`Fail` saying why (code 0 for a reader of a home with no memory yet)."""
    home = ensure_home(home_of(args))
    settings, sealer = sealed_settings(args.profile, home)
    embedder = None
    if embed:
        embedder, msg = load_embedder(settings.memory.model_dir)
        print(msg, file=sys.stderr)
    if not settings.memory.chroma_url and not write and not (home / "chroma").is_dir():
        raise Fail(f"no memory stored under {home} yet", 0)
    store = MemoryStore(home, settings.memory, embedder, read_only=not write, sealer=sealer)
    if not store.available:
        raise Fail(f"memory store unavailable: {store.error}")
    return store, settings


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def cmd_sessions(args) -> int:
    store, _ = _open(args)
    with store:
        rows = store.sessions()
    rows = [r for r in rows if not args.tenant or r["tenant"] == args.tenant][: args.limit or None]
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    if not rows:
        print("no sessions")
        return 0
    w = max(7, *(len(r["session"]) for r in rows))
    print(f"{'SESSION':<{w}}  {'TENANT':<18}  {'ITEMS':>6}  {'TURNS':>5}  {'FIRST':<16}  {'LAST':<16}  TOOLS")
    for r in rows:
        tools = ",".join(r["tools"][:6]) + ("…" if len(r["tools"]) > 6 else "")
        print(f"{r['session']:<{w}}  {r['tenant']:<18}  {r['items']:>6}  {r['turns']:>5}  {_when(r['first']):<16}  "
              f"{_when(r['last']):<16}  {tools}")
    return 0


def cmd_stats(args) -> int:
    store, settings = _open(args)
    with store:
        s = store.stats()
    if args.json:
        print(json.dumps(s))
        return 0
    print(f"store      {s['backend']}")
    print(f"items      {s.get('items', 0)}  ({s.get('vectors', 0)} with vectors, {s.get('text_only', 0)} text-only)")
    print(f"sessions   {s.get('sessions', 0)}")
    print(f"tenants    {len(s.get('tenants', {}))}: " + ", ".join(f"{t} {n}" for t, n in sorted(s.get("tenants", {}).items())))
    print("kinds      " + ", ".join(f"{k} {n}" for k, n in sorted(s.get("kinds", {}).items())))
    print(f"oldest     {_when(s.get('oldest'))}   newest {_when(s.get('newest'))}")
    if "disk_bytes" in s:
        print(f"disk       {s['disk_bytes'] / 1e6:.1f} MB")
    print(f"ttl        {settings.memory.ttl_days:g} days (contextwarden memory prune)")
    return 0


def cmd_export(args) -> int:
    store, _ = _open(args)
    with store:
        n = store.export_jsonl("/dev/stdout" if args.file == "-" else args.file)
    print(f"exported {n} items to {args.file}", file=sys.stderr)
    return 0


def cmd_import(args) -> int:
    home, cred = home_of(args), credential_from(args)
    with open(args.file, "rb") as f:
        records = [rec for rec in map(_record, f) if isinstance(rec, dict)]
    first = ask_proxy(home, cred, "import", records=records[:2000])
    if first is not None:  # the proxy holds the store: the items go through its ingestor
        n = first["queued"] + sum(ask_proxy(home, cred, "import", records=records[i:i + 2000])["queued"]
                                  for i in range(2000, len(records), 2000))
        print(f"imported {n} items from {args.file} through the running proxy (deduplicated as they are stored)")
        return 0
    store, _ = _open(args, write=True, embed=True)
    with store:
        before = store.count()
        n = store.import_jsonl(args.file)
        print(f"imported {n} new items from {args.file} ({before} -> {store.count()})")
    return 0


def _record(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def cmd_prune(args) -> int:
    store, settings = _open(args, write=True)
    days = settings.memory.ttl_days if args.days is None else args.days
    with store:
        n = store.prune(days)
    print(f"pruned {n} items older than {days:g} days")
    return 0


def cmd_delete(args) -> int:
    who = f" of tenant {args.tenant}" if args.tenant else ""
    out = ask_proxy(home_of(args), credential_from(args), "delete", session=args.session, tenant=args.tenant)
    if out is not None:  # the proxy holds the store
        print(f"deleted {out['deleted']} items of session {args.session}{who} through the running proxy")
        return 0
    store, _ = _open(args, write=True)
    with store:
        n = store.delete_session(args.session, args.tenant)
    print(f"deleted {n} items of session {args.session}{who}")
    return 0
