"""``contextwarden run``: start the proxy (mitmdump with the contextwarden script)."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from importlib.util import find_spec
from pathlib import Path

from mitmproxy.tools.main import mitmdump

from ._common import add_home_profile, add_plugins, cli_name, home_of, mitmproxy_confdir
from .doctor import warnings
from .profiles import checked_settings

SCRIPT = Path(str(getattr(find_spec("contextwarden.addons"), "origin", ""))).parent / "contextwarden.py"  # mitmdump's -s


def register(sub) -> None:
    p = sub.add_parser("run", description="Start the proxy. Anything after -- is passed to mitmdump.")
    add_home_profile(p)
    p.add_argument("--listen-host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--mode", default="regular",
                   help="regular (HTTPS_PROXY, recommended) or reverse:https://api.anthropic.com (base URL)")
    add_plugins(p)
    p.add_argument("--confdir", default=None, help="mitmproxy's confdir (its CA lives there; default ~/.mitmproxy)")
    p.add_argument("--flow-lines", action="store_true", help="print mitmdump's line per flow (off by default)")
    p.add_argument("--dry-run", action="store_true", help="print the instructions and the mitmdump command, do not start")
    p.add_argument("mitmdump_args", nargs=argparse.REMAINDER, help="extra mitmdump arguments after --")
    p.set_defaults(func=run)


def instructions(host: str, port: int, mode: str, confdir) -> str:
    ca = confdir / "mitmproxy-ca-cert.pem"
    ca_note = "" if ca.exists() else "   (mitmproxy creates it on first start)"
    proxy = f"http://{host}:{port}"
    if mode.startswith("reverse:"):
        return f"""contextwarden: reverse mode, forwarding to {mode.split(":", 1)[1]}
  Claude Code / Anthropic SDK:   export ANTHROPIC_BASE_URL={proxy}
  OpenAI SDK:                    export OPENAI_BASE_URL={proxy}/v1
  Codex CLI:                     codex -c 'openai_base_url="{proxy}/v1"'
  Note: a custom base URL makes Claude Code drop some features (1M-context beta, tool-search
  deferral). Regular mode (the default: contextwarden run) keeps them."""
    return f"""contextwarden: regular mode on {proxy}
  mitmproxy CA: {ca}{ca_note}

  Claude Code (Node):
    export HTTPS_PROXY={proxy}
    export NODE_EXTRA_CA_CERTS={ca}
  Anthropic / OpenAI Python SDKs (httpx), Codex CLI:
    export HTTPS_PROXY={proxy}
    export SSL_CERT_FILE={ca}
    export REQUESTS_CA_BUNDLE={ca}
  Reverse mode instead (no CA needed):
    {cli_name()} run --mode reverse:https://api.anthropic.com   then   export ANTHROPIC_BASE_URL={proxy}
"""


def port_taken(host: str, port: int) -> bool:
    """Whether ``host:port`` is already bound (as mitmproxy binds: SO_REUSEADDR). Checked before
    anything starts, so the hint names this command's option, not mitmproxy's ``--mode regular@PORT``."""
    try:
        socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET).close()
    except OSError as e:
        return e.errno == errno.EADDRINUSE  # (a host it cannot resolve: mitmproxy reports it)
    return False


def mitmdump_argv(args) -> list[str]:
    argv = ["-s", str(SCRIPT), "--listen-host", args.listen_host, "--listen-port", str(args.port),
            "--set", f"cw_profile={args.profile}"]
    if args.mode != "regular":
        argv += ["--mode", args.mode]
    sets = {"cw_home": args.home and home_of(args), "cw_plugins": args.plugins, "confdir": args.confdir,
            "cw_flow_lines": getattr(args, "flow_lines", False) and "true",
            # Claude Code opens CONNECT tunnels before it knows the host it needs; lazy connects keep that cheap
            "connection_strategy": "lazy"}
    argv += [a for key, value in sets.items() if value for a in ("--set", f"{key}={value}")]
    extra = args.mitmdump_args
    if extra and extra[0] == "--":
        extra = extra[1:]
    # an option the user sets after -- wins over ours (mitmdump refuses two values for one option)
    theirs = {v.split("=", 1)[0] for k, v in zip(extra, extra[1:]) if k == "--set"}
    ours = [a for pair in zip(argv[::2], argv[1::2]) if not (pair[0] == "--set" and pair[1].split("=", 1)[0] in theirs)
            for a in pair]
    return ours + extra


def run(args) -> int:
    settings = checked_settings(args)
    for w in warnings(settings):  # the proxy runs without them, but worse: say so, with the fix
        print(f"contextwarden: warning: {w}", file=sys.stderr)
    if not args.dry_run and args.port and port_taken(args.listen_host, args.port):
        print(f"contextwarden: {args.listen_host}:{args.port} is already in use (a proxy running there? "
              f"`{cli_name()} tui` watches it); another port: {cli_name()} run --port {args.port + 2}", file=sys.stderr)
        return 1
    print(instructions(args.listen_host, args.port, args.mode, mitmproxy_confdir(args.confdir)))
    mode = "observe-only" if settings.proxy.observe_only else "active"
    print(f"  profile: {settings.name} ({mode}); events: {home_of(args) / 'logs' / 'events.jsonl'}; "
          f"watch (another terminal): {cli_name()} tui" + (f" --home {home_of(args)}" if args.home else "") + "\n")
    argv = mitmdump_argv(args)
    if args.dry_run:
        print("mitmdump " + " ".join(argv))
        return 0
    sys.stdout.flush()
    os.environ.setdefault("CONTEXTWARDEN_PROXY__AUTO_PROCESS", "separate")  # the proxy (and its engine): memory apart
    return mitmdump(argv) or 0
