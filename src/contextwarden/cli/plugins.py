"""``contextwarden plugins``: the stages in order, their hooks, and where each was loaded from."""

from __future__ import annotations

from ..core.pluginmanager import describe, make_plugin_manager
from ..settings import load_settings
from ._common import add_home_profile, add_plugins, home_of


def register(sub) -> None:
    p = sub.add_parser("plugins")
    add_home_profile(p)
    add_plugins(p)
    p.set_defaults(func=run)


def run(args) -> int:
    settings = load_settings(args.profile, home_of(args))
    pm = make_plugin_manager(args.plugins)
    order, disabled = settings.pipeline.order, settings.pipeline.disabled
    print(f"profile {settings.name}: stages run in this order (budget {settings.pipeline.stage_budget_ms:g} ms each unless set)")
    n = 0
    for info in describe(pm, order, disabled):
        state = "off" if info.name in disabled else ("on" if info.is_stage else "-")
        n += state == "on"
        pos = f"{n}." if state == "on" else "  "
        budget = settings.pipeline.budgets_ms.get(info.name)
        extra = f" budget {budget:g} ms" if budget else ""
        print(f"  {pos:3} {info.name:<14} [{state}]{extra}  hooks: {', '.join(info.hooks) or '-'}")
        print(f"      from {info.source}")
    errors = getattr(pm, "cw_errors", {})
    for name, err in errors.items():
        print(f"  !!  {name:<14} failed to load: {err}")
    return 1 if errors else 0
