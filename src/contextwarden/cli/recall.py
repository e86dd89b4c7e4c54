"""``contextwarden recall ID`` and ``contextwarden mcp``: get back what a rewrite took out.

``recall`` prints the stored original of a memory id (the id a clearing stub or a compaction summary
names) verbatim. It asks the running proxy's recall API (milliseconds; :mod:`contextwarden.memory.api`)
and, when no proxy runs on this home, opens the originals directly. ``--api-key`` (or
``$CONTEXTWARDEN_CREDENTIAL``) scopes it to that key's tenant; without one, this machine's user sees
every tenant of the home (unless the proxy requires a credential: ``memory.api_require_credential``).

``mcp`` runs the MCP server (stdio) with the tools ``recall``, ``search`` and ``remember``
(:mod:`contextwarden.mcpserver`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from ._common import home_of


def credential_from(args) -> str | None:
    """The caller's credential: ``--api-key``, else ``$CONTEXTWARDEN_CREDENTIAL``."""
    return getattr(args, "api_key", None) or os.environ.get("CONTEXTWARDEN_CREDENTIAL") or None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recall", help="print what a memory id names (a cleared result, a compacted span), verbatim",
                       description="Print the stored original of memory ids verbatim (through the running proxy, "
                                   "else from the store directly).")
    p.add_argument("ids", nargs="+", metavar="ID", help="memory id(s), e.g. m-0123456789abcdef")
    p.add_argument("--api-key", help="only the tenant this API key (or OAuth token) maps to "
                                     "(default: $CONTEXTWARDEN_CREDENTIAL, else every tenant of this home)")
    p.add_argument("--home", default=None, help="cw_home (default: $CONTEXTWARDEN_HOME or the user data dir)")
    p.add_argument("--json", action="store_true", help="one JSON object per item, with where it came from")
    p.set_defaults(func=run_recall)

    m = sub.add_parser("mcp", help="run the MCP server (stdio): recall, search and remember for agents",
                       description="MCP server over stdio for Claude Code, Codex CLI and other MCP clients: "
                                   "claude mcp add contextwarden -- contextwarden mcp")
    m.add_argument("--api-key", help="the credential whose tenant the tools serve (default: $CONTEXTWARDEN_CREDENTIAL, "
                                     "$ANTHROPIC_API_KEY, $OPENAI_API_KEY)")
    m.add_argument("--home", default=None, help="cw_home of the proxy to talk to")
    m.add_argument("--print-config", action="store_true",
                   help="print how to register this server with Claude Code and Codex CLI (absolute paths: "
                        "they work without the virtualenv on PATH), and exit")
    m.set_defaults(func=run_mcp)


def recall_items(home, ids: list[str], credential: str | None) -> tuple[list[dict], str]:
    """(items, how): through the running proxy, else from the originals on disk."""
    from ..memory.api import ApiError, RecallClient, item_dict

    client = RecallClient.find(home, credential)
    if client is not None:
        try:
            return client.call("recall", ids=ids)["items"], "proxy"
        except (ApiError, OSError) as e:
            if isinstance(e, ApiError) and e.status in (401, 403):
                raise
        finally:
            client.close()
    from ..home import secret_file
    from ..memory.originals import OriginalStore
    from ..redact import tenant_id

    store = OriginalStore(home, read_only=True)
    try:
        tenants = [tenant_id(credential, secret_file(home, "tenant.salt"))] if credential else store.tenants()
        return [item_dict(it) for it in store.get(ids, tenants)], "store"
    finally:
        store.close()


def run_recall(args: argparse.Namespace) -> int:
    import orjson

    from ..memory.api import ApiError

    home = home_of(args)
    try:
        items, _how = recall_items(home, list(args.ids), credential_from(args))
    except ApiError as e:
        print(f"contextwarden recall: {e}", file=sys.stderr)
        return 1
    found = {it["id"] for it in items}
    for it in items:
        if args.json:
            sys.stdout.write(orjson.dumps(it).decode() + "\n")
        else:
            sys.stdout.write(it["text"])
            if not it["text"].endswith("\n"):
                sys.stdout.write("\n")
    missing = [i for i in args.ids if i not in found]
    for i in missing:
        print(f"contextwarden recall: {i}: not found (not stored, deleted, or another tenant's)", file=sys.stderr)
    return 1 if missing else 0


def mcp_command(home: str | None = None) -> list[str]:
    """The absolute command that starts this MCP server: the console script beside this interpreter (a
    client starts it without the virtualenv's bin on its PATH), else the interpreter with ``-m``."""
    script = Path(sys.executable).absolute().parent / "contextwarden"
    cmd = [str(script)] if script.exists() else [str(Path(sys.executable).absolute()), "-m", "contextwarden"]
    return cmd + ["mcp"] + (["--home", str(Path(home).expanduser().absolute())] if home else [])


def run_mcp(args: argparse.Namespace) -> int:
    from ..mcpserver import serve

    if args.print_config:
        cmd = mcp_command(args.home)
        print("# Claude Code\nclaude mcp add contextwarden -- " + shlex.join(cmd))
        print("\n# Codex CLI: ~/.codex/config.toml\n[mcp_servers.contextwarden]\n"
              f"command = {json.dumps(cmd[0])}\nargs = {json.dumps(cmd[1:])}")
        return 0

    cred = (args.api_key or os.environ.get("CONTEXTWARDEN_CREDENTIAL") or os.environ.get("ANTHROPIC_API_KEY")
            or os.environ.get("OPENAI_API_KEY") or None)
    serve(home_of(args), cred)
    return 0
