"""Options shared by subcommands."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from contextwarden.home import default_home


def add_home_profile(p: argparse.ArgumentParser, profile_default: str | None = "default") -> None:
    p.add_argument("--home", default=None, help="data directory (default: $CONTEXTWARDEN_HOME, else the user data dir)")
    p.add_argument("--profile", default=profile_default, help="profile name from profiles/ or a YAML path")


def home_of(args) -> Path:
    return Path(args.home).expanduser() if getattr(args, "home", None) else default_home()


def checked_settings(args):
    """The profile's settings, checked against the stages loaded with ``args.plugins`` (an unknown stage
    is a SettingsError), and the warnings about their order."""
    from contextwarden.pluginmanager import check_stage_names, make_plugin_manager, order_warnings
    from contextwarden.settings import load_settings

    settings = load_settings(args.profile, home_of(args))
    pm = make_plugin_manager(getattr(args, "plugins", None))
    check_stage_names(pm, settings.pipeline)
    return settings, order_warnings(pm, settings.pipeline)


def add_plugins(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugins", default=None, help="a folder of drop-in plugin files (*.py)")


def cli_name() -> str:
    """How the user types this command in a new terminal: ``contextwarden`` when that is on PATH and is
    this one, else its absolute path (after ``make run`` the virtualenv's bin is not on PATH)."""
    mine = Path(sys.executable).absolute().parent / "contextwarden"
    found = shutil.which("contextwarden")
    if found is not None and (not mine.exists() or Path(found).absolute() == mine):
        return "contextwarden"
    return str(mine) if mine.exists() else f"{Path(sys.executable).absolute()} -m contextwarden"


def script_path() -> Path:
    import contextwarden.addons as addons

    return Path(addons.__file__).parent / "contextwarden.py"


def mitmproxy_confdir(confdir: str | None = None) -> Path:
    return Path(confdir or "~/.mitmproxy").expanduser()
