"""``contextwarden recall ID``: get back what a rewrite took out.

``recall`` prints the stored original of a memory id (the id a clearing stub or a compaction summary
names) verbatim. It asks the running proxy's recall API (milliseconds; :mod:`contextwarden.memory.api`)
and, when no proxy runs on this home, opens the originals directly. ``--api-key`` (or
``$CONTEXTWARDEN_CREDENTIAL``) scopes it to that key's tenant; without one, this machine's user sees
every tenant of the home (unless the proxy requires a credential: ``memory.api_require_credential``).
"""

from __future__ import annotations

import argparse
import sys

import orjson

from ..memory.api import ApiError, item_dict
from ..memory.originals import OriginalStore
from ..util.home import secret_file
from ..util.redact import tenant_id
from . import Fail
from ._common import ask_proxy, credential_from, home_of


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recall", description="Print the stored original of memory ids verbatim (through the "
                                             "running proxy, else from the store directly).")
    p.add_argument("ids", nargs="+", metavar="ID", help="memory id(s), e.g. m-0123456789abcdef")
    p.add_argument("--api-key", help="only the tenant this API key (or OAuth token) maps to "
                                     "(default: $CONTEXTWARDEN_CREDENTIAL, else every tenant of this home)")
    p.add_argument("--home", default=None, help="cw_home (default: $CONTEXTWARDEN_HOME or the user data dir)")
    p.add_argument("--json", action="store_true", help="one JSON object per item, with where it came from")
    p.set_defaults(func=run_recall)


def recall_items(home, ids: list[str], credential: str | None) -> list[dict]:
    """The items: through the running proxy, else from the originals on disk."""
    try:
        out = ask_proxy(home, credential, "recall", ids=ids)
    except (ApiError, OSError) as e:
        if isinstance(e, ApiError) and e.status in (401, 403):
            raise
        out = None
    if out is not None:
        return out["items"]
    store = OriginalStore(home, read_only=True)
    try:
        tenants = [tenant_id(credential, secret_file(home, "tenant.salt"))] if credential else store.tenants()
        return [item_dict(it) for it in store.get(ids, tenants)]
    finally:
        store.close()


def run_recall(args: argparse.Namespace) -> int:
    home = home_of(args)
    try:
        items = recall_items(home, list(args.ids), credential_from(args))
    except ApiError as e:
        raise Fail(f"contextwarden recall: {e}") from None
    found = {it["id"] for it in items}
    for it in items:
        text = orjson.dumps(it).decode() if args.json else it["text"]
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    missing = [i for i in args.ids if i not in found]
    for i in missing:
        print(f"contextwarden recall: {i}: not found (not stored, deleted, or another tenant's)", file=sys.stderr)
    return 1 if missing else 0

