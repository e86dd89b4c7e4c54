"""``contextwarden policy show | reset``: what each tenant's sessions taught clearing
(:mod:`contextwarden.compress.policy`), read from the state the proxy and its replicas share (SQLite in the
cw_home, or the profile's Redis)."""

from __future__ import annotations

import argparse
import sys
from typing import cast

import orjson

from ..compress.policy import NS_POLICY, LearnedPolicy, describe
from ..settings import load_settings
from ..store.state import RedisStateStore, StateStore, open_state
from ._common import home_of


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policy", help="the learned clearing policy per tenant: show, reset",
                       description="What each tenant's sessions taught clearing (clearing.policy: learn): per tool, "
                                   "how many cleared results the model fetched again, and the paths it did; per path read "
                                   "and per tool, whether the model used its results late or left them; read from the "
                                   "state the running proxy and its replicas share.")
    p.add_argument("--home", default=None, help="cw_home (default: $CONTEXTWARDEN_HOME or the user data dir)")
    p.add_argument("--profile", default="default", help="the profile whose state backend to read (default: default)")
    p.add_argument("--tenant", default=None, help="only this tenant (default: every tenant)")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.add_argument("action", choices=("show", "reset"), help="show: print the policy; reset: forget what was learned")
    p.set_defaults(func=run)


def run(args) -> int:
    home = home_of(args)
    home.mkdir(parents=True, exist_ok=True)
    # (both backends list and delete; state.Codec does not declare it)
    state = cast(StateStore | RedisStateStore, open_state(load_settings(args.profile, home), home))
    try:
        found = [(t, v) for t, v in state.items(NS_POLICY) if args.tenant is None or t == args.tenant]
        if args.action == "reset":
            for tenant, _ in found:
                state.delete(NS_POLICY, tenant)
            print(f"reset the learned policy of {len(found)} tenant{'s' if len(found) != 1 else ''}")
            return 0
        if args.json:
            sys.stdout.buffer.write(orjson.dumps(dict(found), option=orjson.OPT_INDENT_2) + b"\n")
            return 0
        if not found:
            print("nothing learned yet" + (f" for tenant {args.tenant}" if args.tenant else "")
                  + " (clearing.policy: learn in the profile turns learning on)")
            return 0
        for tenant, v in found:
            print(describe(tenant, LearnedPolicy.from_dict(v)))
        return 0
    finally:
        state.close()
