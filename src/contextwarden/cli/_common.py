"""Options shared by subcommands."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from contextwarden.memory.api import RecallClient
from contextwarden.util.home import default_home


def add_home_profile(p: argparse.ArgumentParser, profile_default: str | None = "default") -> None:
    p.add_argument("--home", default=None, help="data directory (default: $CONTEXTWARDEN_HOME, else the user data dir)")
    p.add_argument("--profile", default=profile_default, help="profile name from profiles/ or a YAML path")


def home_of(args) -> Path:
    return Path(args.home).expanduser() if getattr(args, "home", None) else default_home()


def credential_from(args) -> str | None:
    """The caller's credential: ``--api-key``, else ``$CONTEXTWARDEN_CREDENTIAL``."""
    return getattr(args, "api_key", None) or os.environ.get("CONTEXTWARDEN_CREDENTIAL") or None


def add_plugins(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugins", default=None, help="a folder of drop-in plugin files (*.py)")


def own_command() -> list[str]:
    """This command by absolute path (after ``make run`` the virtualenv's bin is not on PATH): the console
    script beside this interpreter, else the interpreter with ``-m``."""
    script = Path(sys.executable).absolute().parent / "contextwarden"
    return [str(script)] if script.exists() else [str(Path(sys.executable).absolute()), "-m", "contextwarden"]


def cli_name() -> str:
    """How the user types this command in a new terminal: ``contextwarden`` when that is on PATH and is
    this one, else :func:`own_command`."""
    mine, found = own_command(), shutil.which("contextwarden")
    if found is not None and (len(mine) > 1 or str(Path(found).absolute()) == mine[0]):
        return "contextwarden"
    return " ".join(mine)


def mitmproxy_confdir(confdir: str | None = None) -> Path:
    return Path(confdir or "~/.mitmproxy").expanduser()


def ask_proxy(home: Path, credential: str | None, method: str, **args: Any) -> Any:
    """The answer of the recall API of the proxy running on ``home`` to ``method`` (``ApiError`` when it
    refuses, ``OSError`` when it cannot be reached), or None when no proxy runs there."""
    client = RecallClient.find(home, credential)
    if client is None:
        return None
    try:
        return client.call(method, **args)
    finally:
        client.close()
