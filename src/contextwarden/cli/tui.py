"""``contextwarden tui``: watch the running proxy (or a recorded event log) in the terminal."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..tui.app import ContextWardenApp
from ..tui.client import LiveClient, LogSource
from ..tui.replicas import RedisStreamSource
from ..util.home import default_home


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tui", description="Connects to the proxy's event server (found through cw_home/tui.json, token-protected) "
                           "and reconnects when the proxy restarts. With --log, opens a recorded events.jsonl offline.")
    p.add_argument("--home", type=Path, default=None,
                   help="the proxy's data directory (default: $CONTEXTWARDEN_HOME, else the user data dir)")
    p.add_argument("--log", type=Path, default=None, metavar="FILE",
                   help="open a recorded events.jsonl instead of connecting (read-only)")
    p.add_argument("--redis", default=None, metavar="URL",
                   help="read the events of every replica from the Redis stream of a team gateway (state.url; read-only)")
    p.add_argument("--prefix", default="cw", help="with --redis: the gateway's state.prefix (default: cw)")
    p.add_argument("--export-dir", type=Path, default=None,
                   help="where session snapshots and saved requests go (default: the current directory)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.redis:
        source = RedisStreamSource(args.redis, args.prefix)
    elif args.log is not None:
        if not args.log.is_file():
            print(f"contextwarden tui: no such log: {args.log}")
            return 2
        source = LogSource(args.log)
    else:
        source = LiveClient(args.home.expanduser() if args.home else default_home())
    ContextWardenApp(source, export_dir=args.export_dir).run()
    return 0
