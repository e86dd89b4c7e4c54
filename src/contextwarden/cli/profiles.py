"""``contextwarden profiles`` and ``contextwarden config``: what profiles exist and what one resolves to."""

from __future__ import annotations

import sys

import yaml

from ._common import add_home_profile, add_plugins, checked_settings, home_of


def register(sub) -> None:
    p = sub.add_parser("profiles", help="list the profiles")
    p.add_argument("--home", default=None)
    p.set_defaults(func=list_profiles)
    c = sub.add_parser("config", help="print a profile's effective settings (after extends and env overrides)")
    add_home_profile(c)
    add_plugins(c)
    c.set_defaults(func=show_config)


def list_profiles(args) -> int:
    from contextwarden.settings import available_profiles, load_settings

    for name, path in available_profiles(home_of(args)).items():
        try:
            desc = load_settings(path, home_of(args)).description
        except Exception as e:
            desc = f"INVALID: {e}"
        print(f"{name:<14} {desc}\n{'':<14} {path}")
    return 0


def show_config(args) -> int:
    from contextwarden.settings import SettingsError

    try:
        s, order = checked_settings(args)
    except SettingsError as e:
        print(f"contextwarden: {e}", file=sys.stderr)
        return 2
    for w in order:
        print(f"contextwarden: warning: {w}", file=sys.stderr)
    print(yaml.safe_dump(s.model_dump(mode="json"), sort_keys=False), end="")
    return 0
