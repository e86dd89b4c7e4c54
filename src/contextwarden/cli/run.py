"""``contextwarden run``: start the proxy (mitmdump with the contextwarden script)."""

from __future__ import annotations

import argparse
import sys

from ._common import add_home_profile, home_of, mitmproxy_confdir, script_path


def register(sub) -> None:
    p = sub.add_parser("run", help="start the proxy on 127.0.0.1:8080 with a profile",
                       description="Start the proxy. Anything after -- is passed to mitmdump.")
    add_home_profile(p)
    p.add_argument("--listen-host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--mode", default="regular",
                   help="regular (HTTPS_PROXY, recommended) or reverse:https://api.anthropic.com (base URL)")
    p.add_argument("--plugins", default=None, help="a folder of drop-in plugin files")
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
        target = mode.split(":", 1)[1]
        base = f"http://{host}:{port}"
        return f"""contextwarden: reverse mode, forwarding to {target}
  Claude Code / Anthropic SDK:   export ANTHROPIC_BASE_URL={base}
  OpenAI SDK / Codex CLI:        export OPENAI_BASE_URL={base}/v1
  Note: a custom base URL makes Claude Code drop some features (1M-context beta, tool-search
  deferral). Regular mode (the default: contextwarden run) keeps them."""
    return f"""contextwarden: regular mode on {proxy}
  mitmproxy CA: {ca}{ca_note}

  Claude Code (Node):
    export HTTPS_PROXY={proxy}
    export NODE_EXTRA_CA_CERTS={ca}
  Anthropic / OpenAI Python SDKs (httpx):
    export HTTPS_PROXY={proxy}
    export SSL_CERT_FILE={ca}
    export REQUESTS_CA_BUNDLE={ca}
  Reverse mode instead (no CA needed):
    contextwarden run --mode reverse:https://api.anthropic.com   then   export ANTHROPIC_BASE_URL=http://{host}:{port}
"""


def mitmdump_argv(args) -> list[str]:
    argv = ["-s", str(script_path()), "--listen-host", args.listen_host, "--listen-port", str(args.port),
            "--set", f"cw_profile={args.profile}"]
    if args.mode != "regular":
        argv += ["--mode", args.mode]
    if args.home:
        argv += ["--set", f"cw_home={home_of(args)}"]
    if args.plugins:
        argv += ["--set", f"cw_plugins={args.plugins}"]
    if args.confdir:
        argv += ["--set", f"confdir={args.confdir}"]
    if getattr(args, "flow_lines", False):
        argv += ["--set", "cw_flow_lines=true"]
    # Claude Code opens CONNECT tunnels before it knows the host it needs; lazy connects keep that cheap
    argv += ["--set", "connection_strategy=lazy"]
    extra = args.mitmdump_args
    if extra and extra[0] == "--":
        extra = extra[1:]
    return argv + extra


def run(args) -> int:
    from contextwarden.pluginmanager import check_stage_names, make_plugin_manager
    from contextwarden.settings import SettingsError, load_settings

    try:
        settings = load_settings(args.profile, home_of(args))
        check_stage_names(make_plugin_manager(args.plugins), settings.pipeline)
    except SettingsError as e:
        print(f"contextwarden: {e}", file=sys.stderr)
        return 2
    from contextwarden.assets import warnings

    for w in warnings(settings):  # the proxy runs without them, but worse: say so, with the fix
        print(f"contextwarden: warning: {w}", file=sys.stderr)
    print(instructions(args.listen_host, args.port, args.mode, mitmproxy_confdir(args.confdir)))
    mode = "observe-only" if settings.proxy.observe_only else "active"
    print(f"  profile: {settings.name} ({mode}); events: {home_of(args) / 'logs' / 'events.jsonl'}; watch: contextwarden tui\n")
    argv = mitmdump_argv(args)
    if args.dry_run:
        print("mitmdump " + " ".join(argv))
        return 0
    sys.stdout.flush()
    from mitmproxy.tools.main import mitmdump

    from ..memory import service as memory_service

    memory_service.AUTO_PROCESS = "separate"  # this process is the proxy: memory in its own process

    return mitmdump(argv) or 0
