"""Options shared by subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from contextwarden.home import default_home


def add_home_profile(p: argparse.ArgumentParser, profile_default: str | None = "default") -> None:
    p.add_argument("--home", default=None, help="data directory (default: $CONTEXTWARDEN_HOME, else the user data dir)")
    p.add_argument("--profile", default=profile_default, help="profile name from profiles/ or a YAML path")


def home_of(args) -> Path:
    return Path(args.home).expanduser() if getattr(args, "home", None) else default_home()


def script_path() -> Path:
    import contextwarden.addons as addons

    return Path(addons.__file__).parent / "contextwarden.py"


def mitmproxy_confdir(confdir: str | None = None) -> Path:
    return Path(confdir or "~/.mitmproxy").expanduser()
