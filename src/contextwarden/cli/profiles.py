"""``contextwarden profiles`` and ``contextwarden config``: what profiles exist and what one resolves to."""

from __future__ import annotations

import sys

import yaml

from ..core.pluginmanager import check_stage_names, make_plugin_manager, order_warnings
from ..settings import Settings, SettingsError, available_profiles, load_settings
from . import Fail
from ._common import add_home_profile, add_plugins, home_of


def register(sub) -> None:
    p = sub.add_parser("profiles")
    p.add_argument("--home", default=None)
    p.set_defaults(func=list_profiles)
    c = sub.add_parser("config")
    add_home_profile(c)
    add_plugins(c)
    c.set_defaults(func=show_config)


def checked_settings(args) -> Settings:
    """The profile's settings, checked against the stages loaded with ``args.plugins``, with the warnings
    about their order printed; :class:`Fail` saying why they are invalid (an unknown stage, for one)."""
    try:
        settings = load_settings(args.profile, home_of(args))
        pm = make_plugin_manager(getattr(args, "plugins", None))
        check_stage_names(pm, settings.pipeline)
    except SettingsError as e:
        raise Fail(f"contextwarden: {e}", 2) from None
    for w in order_warnings(pm, settings.pipeline):
        print(f"contextwarden: warning: {w}", file=sys.stderr)
    return settings


def list_profiles(args) -> int:
    for name, path in available_profiles(home_of(args)).items():
        try:
            desc = load_settings(path, home_of(args)).description
        except Exception as e:
            desc = f"INVALID: {e}"
        print(f"{name:<14} {desc}\n{'':<14} {path}")
    return 0


def show_config(args) -> int:
    s = checked_settings(args)
    print(yaml.safe_dump(s.model_dump(mode="json"), sort_keys=False), end="")
    return 0
