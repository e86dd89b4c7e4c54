"""``contextwarden mcp``: an MCP server (stdio) that lets an agent get back what contextwarden took out of
its context, search its memory, and leave notes for later turns and the other agents of its tenant
(``--print-config`` says how to register it with Claude Code and Codex CLI).

The tools talk to the running proxy's recall API (:mod:`contextwarden.memory.api`); ``recall`` also works
without a proxy (it reads the originals on disk). The tenant is the one of the credential the agent's
client uses (``$CONTEXTWARDEN_CREDENTIAL``, ``$ANTHROPIC_API_KEY`` or ``$OPENAI_API_KEY``); without one,
this machine's user's tenants (``remember`` then refuses: a note never goes to the latest request's tenant).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

from mcp.server.fastmcp import FastMCP

from ..memory.api import ApiError
from ._common import ask_proxy, credential_from, home_of, own_command
from .recall import recall_items

NAME = "contextwarden"
RECALL_DOC = ("Get back, verbatim, content contextwarden took out of this conversation: a tool result a stub "
              "replaced ('Memory id m-…'), or the messages a compaction summary folded. Pass the memory id.")
SEARCH_DOC = ("Search this agent's long-term memory (earlier in this conversation, other sessions, notes of other "
              "agents) by meaning and keywords. Returns ids, scores and where each hit came from; recall an id for "
              "the whole text. budget_tokens: the most relevant hits that fit in that many tokens.")
REMEMBER_DOC = ("Store a note for later turns and for the other agents of this tenant (shared=true: of the shared "
                "workspace too). Returns its memory id.")


def _format_hit(h: dict) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(h["ts"])) if h.get("ts") else "?"
    src = f" (part of {h['source_id']})" if h.get("source_id") and h["source_id"] != h["id"] else ""
    return (f"[{h['id']}{src} score {h.get('fused', 0):.4f} · session {str(h.get('session'))[:16]} message "
            f"#{h.get('turn')} {h.get('role')}{' ' + h['tool'] if h.get('tool') else ''} · {when}]\n{h['text']}")


def register(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("mcp", description="MCP server over stdio for Claude Code, Codex CLI and other MCP clients: "
                                          "claude mcp add contextwarden -- contextwarden mcp")
    m.add_argument("--api-key", help="the credential whose tenant the tools serve (default: $CONTEXTWARDEN_CREDENTIAL, "
                                     "$ANTHROPIC_API_KEY, $OPENAI_API_KEY)")
    m.add_argument("--home", default=None, help="cw_home of the proxy to talk to")
    m.add_argument("--print-config", action="store_true",
                   help="print how to register this server with Claude Code and Codex CLI (absolute paths: "
                        "they work without the virtualenv on PATH), and exit")
    m.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.print_config:  # absolute: a client starts it without the virtualenv's bin on its PATH
        cmd = own_command() + ["mcp"] + (["--home", str(Path(args.home).expanduser().absolute())] if args.home else [])
        print("# Claude Code\nclaude mcp add contextwarden -- " + shlex.join(cmd))
        print("\n# Codex CLI: ~/.codex/config.toml\n[mcp_servers.contextwarden]\n"
              f"command = {json.dumps(cmd[0])}\nargs = {json.dumps(cmd[1:])}")
        return 0
    cred = credential_from(args) or os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("OPENAI_API_KEY") or None
    build(home_of(args), cred).run("stdio")
    return 0


def build(home: Path, credential: str | None):
    """The FastMCP server (not started)."""
    server = FastMCP(NAME, instructions="contextwarden keeps what it clears or compacts out of the context; "
                                        "recall a memory id from a stub to read it verbatim.")

    def ask(method: str, **args: Any) -> Any:
        """The proxy's answer, or a line saying why there is none."""
        try:
            out = ask_proxy(home, credential, method, **args)
        except ApiError as e:
            return f"{method} failed: {e}"
        if out is None:
            raise RuntimeError("the contextwarden proxy is not running on this machine (start it: contextwarden run)")
        return out

    @server.tool(name="recall", description=RECALL_DOC, structured_output=False)
    def recall(id: str) -> str:  # noqa: A002 - the tool's argument is called "id"
        ids = [i.strip() for i in id.replace(",", " ").split() if i.strip()]
        try:
            items = recall_items(home, ids, credential)
        except ApiError as e:
            return f"recall refused: {e}"
        if not items:
            return f"nothing stored under {id} for this tenant (not stored, deleted, or not yours)"
        return "\n\n".join(it["text"] if len(items) == 1 else f"[{it['id']}]\n{it['text']}" for it in items)

    @server.tool(name="search", description=SEARCH_DOC, structured_output=False)
    def search(query: str, k: int = 5, budget_tokens: int | None = None) -> str:
        out = ask("search", query=query, k=k, budget_tokens=budget_tokens)
        if isinstance(out, str):
            return out
        return "\n\n".join(map(_format_hit, out.get("hits") or [])) or "no memory matches"

    @server.tool(name="remember", description=REMEMBER_DOC, structured_output=False)
    def remember(text: str, shared: bool = False) -> str:
        out = ask("remember", text=text, shared=shared, agent="mcp")
        return out if isinstance(out, str) else f"remembered as {out['id']}"

    return server
