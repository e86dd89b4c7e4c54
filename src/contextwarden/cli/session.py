"""``contextwarden session list | show | rollback | pin | unpin | compact``: a session's context versions
and the controls over them, through the running proxy's local API (:mod:`contextwarden.sessionctl`).

The proxy holds the session state it applies on every request, so these commands ask it (127.0.0.1,
the token in cw_home); with no proxy running on the home they say so. With ``$CONTEXTWARDEN_CREDENTIAL``
(the key your client uses) they see and change that key's sessions only (a shared proxy requires it).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import orjson

from ..memory.api import ApiError
from ..sessionctl.render import changed, pin_text, what
from . import Fail
from ._common import ask_proxy, credential_from, home_of


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("session", description="Context versions of a session (every clearing step and compaction), rollback, "
                                              "pins and compact-now, through the running proxy.")
    p.add_argument("--home", default=None, help="cw_home of the proxy (default: $CONTEXTWARDEN_HOME or the user data dir)")
    p.add_argument("--json", action="store_true", help="print the proxy's answer as JSON")
    ss = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    # --home and --json also after the action (`session list --home DIR`, as the other commands take them)
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    after.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def action(name: str, help: str) -> argparse.ArgumentParser:  # noqa: A002 - argparse's own word
        return ss.add_parser(name, help=help, parents=[after])

    action("list", help="the sessions the proxy knows, with their versions and pins")
    s = action("show", help="a session's versions (time, trigger, tokens before/after, what changed) and pins")
    s.add_argument("session", metavar="ID")
    r = action("rollback", help="stop applying the decisions after VERSION (0: the client's own history)")
    r.add_argument("session", metavar="ID")
    r.add_argument("--to", required=True, type=int, metavar="VERSION")
    r.add_argument("--dry-run", action="store_true", help="only say what it would cost and whether it fits")
    for name, text in (("pin", "keep content out of clearing, compaction and compression"), ("unpin", "remove a pin")):
        q = action(name, help=text)
        q.add_argument("session", metavar="ID")
        q.add_argument("target", metavar="TARGET",
                       help="a tool_use id, a message index, or a text (tool:ID, index:N, text:... to be explicit)"
                            + ("; or #N, a pin's number" if name == "unpin" else ""))
    c = action("compact", help="the next request of the session compacts and clears, whatever the thresholds")
    c.add_argument("session", metavar="ID")
    p.set_defaults(func=run_session)


def run_session(args) -> int:
    req = {k: v for k in ("action", "session", "target", "to", "dry_run") if (v := getattr(args, k, None)) is not None}
    try:
        out = ask_proxy(home_of(args), credential_from(args), "session", **req)
    except ApiError as e:
        raise Fail(f"contextwarden session {args.action}: {e}") from None
    if out is None:
        raise SystemExit(f"no proxy is running on {home_of(args)} (start one with `contextwarden run`)")
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() if args.json else render(args.action, out))
    return 1 if isinstance(out, dict) and out.get("refused") else 0


def _clock(ts: Any) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "–"


def _num(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) else "–"


def _pins(pins: list[dict[str, Any]] | None) -> str:
    return "pins: " + (", ".join(map(pin_text, pins or [])) or "none")


def version_line(v: dict[str, Any]) -> str:
    """One version as a line: number, time, what, trigger, tokens before -> after, what changed."""
    mark = "" if v.get("kind") != "decision" else (" " if v.get("applied", True) else "✗")
    return (f"{mark}v{v['n']:<3} {_clock(v.get('ts'))}  {what(v):<16} {str(v.get('trigger') or ''):<11} "
            f"{_num(v.get('tokens_before')):>8} → {_num(v.get('tokens_after')):<8} {changed(v)}").rstrip()


def render(action: str, out: dict[str, Any]) -> str:
    if action == "list":
        rows = out.get("sessions") or []
        if not rows:
            return "no session yet"
        lines = [f"{'session':<38} {'agent':<12} {'ver':>4} {'applied':>8} {'pins':>4}  last"]
        for r in rows:
            lines.append(f"{r['session'][:38]:<38} {str(r['agent'])[:12]:<12} {r['current']:>4} {len(r['applied']):>8} "
                         f"{r['pins']:>4}  {_clock(r.get('last_ts'))}" + ("  (held after rollback)" if r.get("hold") else "")
                         + ("  (compact now)" if r.get("compact_now") else ""))
        return "\n".join(lines)
    if action == "show":
        lines = [f"session {out['session']} · agent {out['agent']} · at version {out['current']}"
                 + (" · held after a rollback" if out.get("hold") else "") + (" · compact now" if out.get("compact_now") else "")]
        lines.append("  v0   (the client's own history)")
        lines += ["  " + version_line(v) for v in out.get("version_list") or []]
        lines.append(_pins(out.get("pin_list")))
        return "\n".join(lines)
    if action == "rollback":
        parts = [f"rollback of {out['key']} from v{out['from']} to v{out['to']}"]
        if out.get("preview"):
            parts.append(f"the next request: {_num(out.get('tokens_before'))} → {_num(out.get('tokens_after'))} tokens "
                         f"(window {_num(out.get('window'))})")
            parts.append(f"cost: {_num(out.get('rewrite_tokens'))} tokens written to the cache again from message "
                         f"{out.get('first_changed_message')} (≈ ${out.get('rewrite_usd', 0):.4f} at {out.get('model') or 'default'} prices)")
        elif out.get("note"):
            parts.append(out["note"])
        if out.get("refused"):
            parts.append("refused: " + out["refused"])
        elif out.get("applied"):
            parts.append(f"done: version {out['version']} (undo: contextwarden session rollback ID --to {out['from']})")
        else:
            parts.append("not applied (--dry-run)")
        return "\n".join(parts)
    if action in ("pin", "unpin"):
        return _pins(out.get("pins"))
    if action == "compact":
        return "the next request of this session compacts and clears"
    return orjson.dumps(out).decode()
