"""The session commands, as the running proxy serves them (recall API method ``session``, event server
command ``session``): ``list``, ``show``, ``rollback``, ``pin``, ``unpin``, ``compact``.

Each takes and returns plain JSON. A session is named by its id (``contextwarden session list`` shows
them), a unique prefix of it, or the full key ``tenant|session|agent`` when a session has several agents.
Writes go through the runtime's state cache, so the proxy's next request of the session sees them.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import nullcontext, suppress
from typing import Any

import orjson

from ..request import pipeline
from ..store.statecache import state_cache
from ..wire.conversation import strip_cache_control
from ..wire.cost import TTL_5M, WRITE_MULT, price_for
from ..wire.dialects import dialect
from . import ledger
from .ledger import NS, _bump, append_version, last_request, off_at, override


class CommandError(ValueError):
    """A session command that cannot be done (the message says why)."""


def _keys(rt, tenants: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Every session key the proxy knows (with a record, or a live request since it started) of
    ``tenants`` (None: every tenant's)."""
    out: dict[str, dict[str, Any]] = {}
    with suppress(Exception):  # a shared state down: the live sessions only
        for k, rec in rt.state.items(NS):
            out[k] = rec if isinstance(rec, dict) else {}
    for k in ledger.live_sessions(rt):
        out.setdefault(k, {})
    if tenants is not None:
        out = {k: v for k, v in out.items() if k.split("|", 1)[0] in tenants}
    return out


def resolve(rt, ident: str, tenants: list[str] | None = None) -> str:
    """The session key ``ident`` names (a key, a session id, or a unique prefix of one), among ``tenants``'."""
    if not isinstance(ident, str) or not ident:
        raise CommandError("a session id is required")
    keys = list(_keys(rt, tenants))
    if ident in keys:
        return ident
    exact = [k for k in keys if k.split("|")[1:2] == [ident]]
    found = exact or [k for k in keys if (k.split("|") + [""])[1].startswith(ident)]
    if not found:
        raise CommandError(f"no session {ident!r} (contextwarden session list shows them)")
    if len(found) > 1:
        # one session, several agents (Claude Code's subagents): the main agent's conversation, if one is
        main = [k for k in found if (a := k.rsplit("|", 1)[-1]) in ("main", "") or a.endswith("/main")]
        if len(main) == 1:
            return main[0]
        raise CommandError(f"{ident!r} names {len(found)} conversations; give one of: " + ", ".join(sorted(found)))
    return found[0]


def _current(versions: list[dict[str, Any]]) -> int:
    """The session's version number now (0: before any)."""
    return versions[-1]["n"] if versions else 0


def _summary(rt, key: str, rec: dict[str, Any]) -> dict[str, Any]:
    tenant, session, agent = (key.split("|") + ["", "", ""])[:3]
    versions = rec.get("versions") or []
    last = last_request(rt, key)
    return {"key": key, "session": session, "agent": agent, "tenant": tenant, "versions": len(versions),
            "current": _current(versions), "applied": ledger.applied_versions(rec),
            "pins": len(rec.get("pins") or []), "hold": bool(rec.get("hold")), "compact_now": bool(rec.get("compact_now")),
            "last_ts": max([v.get("ts") or 0 for v in versions] + [0]) or None,
            "live": last is not None, "tokens_in": getattr(last, "tokens_in", None)}


def show(rt, ident: str) -> dict[str, Any]:
    key = resolve(rt, ident)
    rec = ledger.read(rt, key)
    applied = set(ledger.applied_versions(rec))
    versions = [{**v, "applied": v["n"] in applied} if v.get("kind") == "decision" else dict(v)
                for v in rec.get("versions") or []]
    return {**_summary(rt, key, rec), "version_list": versions, "pin_list": rec.get("pins") or [],
            "window": rt.settings.tokens.context_window}


# -- rollback: previews run the pipeline's re-apply path (Pipeline.decided: every stage's stored records
# put back through its cw_reapply, nothing decided, nothing stored, no event) under other controls -------


def latest(runtime, key: str):
    """The session's latest live request as a context to preview with, its body read back from the
    runtime's recent bodies (None: no request since the proxy started, or its body was evicted)."""
    lite = last_request(runtime, key)
    entry = runtime.bodies.get(lite.flow_id) if lite is not None else None
    body = entry.get("original") if entry else None
    return dataclasses.replace(lite, original=body) if isinstance(body, dict) else None


def decided_state(runtime, ctx, record: dict[str, Any] | None = None, key: str = "") -> tuple[bytes | None, int | None]:
    """:func:`~contextwarden.request.pipeline.decided_state` of ``ctx``'s request, under ``record`` as the
    session's controls when given (for this thread only)."""
    with override(key, record) if record is not None else nullcontext():
        return pipeline.decided_state(runtime, ctx)


def rewrite_cost(rt, ctx, restored: dict[str, Any]) -> dict[str, Any]:
    """What the restored request writes to the provider's cache again: the tokens from the first
    message that differs from what the session sent last (cache markers aside) to its end, and their
    price as a 5-minute cache write at the model's list price."""
    entry = rt.bodies.get(ctx.flow_id) or {}
    sent = entry.get("rewritten") or entry.get("original")
    sent = sent if isinstance(sent, dict) else None
    new = dialect(ctx.api).messages_of(restored) or []
    old = (dialect(ctx.api).messages_of(sent) or []) if sent is not None else []
    first = 0
    while first < min(len(new), len(old)) and strip_cache_control(new[first]) == strip_cache_control(old[first]):
        first += 1
    tokens = sum(rt.tokens.count_message(ctx.api, m, ctx.model) for m in new[first:])
    usd = tokens * price_for(ctx.model, rt.settings.prices).input * WRITE_MULT[TTL_5M] / 1e6
    return {"first_changed_message": first, "rewrite_tokens": tokens, "rewrite_usd": round(usd, 6),
            "model": ctx.model, "known_last_sent": sent is not None}


ROLLED = {"hold": True, "compact_now": False}  # what a rollback sets besides its version


def _rollback_version(rec: dict[str, Any], to: int, tokens_before: int | None, tokens_after: int | None) -> dict[str, Any]:
    return {"kind": "rollback", "stage": "session", "to": to, "set_off": off_at(rec, to), "ts": time.time(),
            "trigger": "user", "tokens_before": tokens_before, "tokens_after": tokens_after}


def _rolled(rec: dict[str, Any], to: int) -> dict[str, Any]:
    """The control record a rollback to ``to`` would leave (for a preview)."""
    return {**_bump(rec, _rollback_version(rec, to, None, None))[0], **ROLLED}


def _fits(tokens: int | None, window: int) -> bool:
    return tokens is not None and tokens <= window


def rollback(rt, ident: str, to: Any, apply: bool = True) -> dict[str, Any]:
    """Roll the session back to version ``to`` (0: the client's own history): says what it costs and
    whether it fits; does it when ``apply`` and it fits."""
    key = resolve(rt, ident)
    rec = ledger.read(rt, key)
    versions = rec.get("versions") or []
    try:
        to = int(to)
    except (TypeError, ValueError):
        raise CommandError("rollback: --to VERSION is a version number (0: before any decision)") from None
    current = _current(versions)
    if not 0 <= to <= current:
        raise CommandError(f"rollback: version {to} does not exist (versions 0..{current})")
    if to == current:
        raise CommandError(f"rollback: the session is at version {to} already")
    window = rt.settings.tokens.context_window
    ctx = latest(rt, key)
    out: dict[str, Any] = {"key": key, "to": to, "from": current, "window": window}
    if ctx is None:
        out.update(preview=False, note="no recent request of this session in the proxy (restarted, or its body "
                                       "evicted): cost and fit unknown")
    else:
        _, before = decided_state(rt, ctx)  # the latest request as the session's decided state now
        raw, tokens = decided_state(rt, ctx, _rolled(rec, to), key)
        out.update(preview=True, tokens_before=before, tokens_after=tokens, fits=_fits(tokens, window),
                   **rewrite_cost(rt, ctx, orjson.loads(raw) if raw is not None else ctx.original))
        if not out["fits"]:
            fits = next((x for x in [0] + [v["n"] for v in versions]
                         if _fits(decided_state(rt, ctx, _rolled(rec, x), key)[1], window)), None)
            then = f"the smallest version that fits is {fits}" if fits is not None else "no version fits"
            out.update(smallest_fitting_version=fits, applied=False,
                       refused=f"the restored request ({tokens:,} tokens) would not fit the window ({window:,}); {then}")
            return out
    if not apply:
        out["applied"] = False
        return out
    after = out.get("tokens_after")
    stored = append_version(rt, key, _rollback_version(ledger.read(rt, key), to, out.get("tokens_before"), after), ROLLED)
    out.update(applied=True, version=stored["n"])
    _emit(rt, key, action="rollback", to=to, version=stored["n"], tokens_after=after,
          rewrite_tokens=out.get("rewrite_tokens"))
    return out


# -- pins and compact-now ---------------------------------------------------------------------------------


def parse_target(target: Any) -> dict[str, Any]:
    """A pin's target: ``tool:ID`` / ``index:N`` / ``text:...``, or guessed: a tool id (``toolu_``,
    ``call_``, ``fc_``...), a message index (digits), else a text to match."""
    if isinstance(target, int):
        return {"kind": "index", "value": target}
    if not isinstance(target, str) or not target:
        raise CommandError("pin: a TARGET is required (a tool_use id, a message index or a text)")
    for kind in ("tool", "index", "text"):
        if target.startswith(kind + ":"):
            value: Any = target[len(kind) + 1:]
            if kind == "index":
                try:
                    value = int(value)
                except ValueError:
                    raise CommandError("pin: index:N takes a number") from None
            return {"kind": kind, "value": value}
    if target.isdigit():
        return {"kind": "index", "value": int(target)}
    if target.startswith(("toolu_", "call_", "fc_", "srvtoolu_")) and " " not in target:
        return {"kind": "tool", "value": target}
    return {"kind": "text", "value": target}


def _same_target(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["kind"] == b["kind"] and a["value"] == b["value"]


def _emit(rt, key: str, **data: Any) -> None:
    rt.bus.emit("session", {"key": key, **data}, session=key.split("|")[1] if "|" in key else key)


def pin(rt, ident: str, target: Any) -> dict[str, Any]:
    key = resolve(rt, ident)
    p = parse_target(target)

    def add(cur):
        cur = dict(cur or {})
        pins = list(cur.get("pins") or [])
        if any(_same_target(x, p) for x in pins):
            return cur
        n = int(cur.get("pin_next") or 1)
        cur.update(pins=pins + [{**p, "id": n, "ts": time.time()}], pin_next=n + 1)
        return cur

    rec = state_cache(rt).update(NS, key, add)
    _emit(rt, key, action="pin", target=p)
    return {"key": key, "pins": rec.get("pins") or []}


def unpin(rt, ident: str, target: Any) -> dict[str, Any]:
    """Remove a pin: by its number (``#N`` or N as listed by show) or by its target."""
    key = resolve(rt, ident)
    rec = ledger.read(rt, key)
    pins = rec.get("pins") or []
    sel = str(target)
    if sel.startswith("#") and sel[1:].isdigit():
        hit = [x for x in pins if x["id"] == int(sel[1:])]
    else:
        want = parse_target(target)
        hit = [x for x in pins if _same_target(x, want)]
        if not hit and sel.isdigit():  # "3": a pin's number when no index pin 3 exists
            hit = [x for x in pins if x["id"] == int(sel)]
    if not hit:
        raise CommandError(f"unpin: no pin {target!r} (contextwarden session show lists them)")
    gone = {x["id"] for x in hit}
    new = state_cache(rt).update(NS, key, lambda cur: {**(cur or {}), "pins": [x for x in (cur or {}).get("pins") or []
                                                                            if x["id"] not in gone]})
    _emit(rt, key, action="unpin", ids=sorted(gone))
    return {"key": key, "pins": new.get("pins") or [], "removed": sorted(gone)}


def compact(rt, ident: str) -> dict[str, Any]:
    """The next request of the session compacts and clears whatever the thresholds say (and ends a
    rollback's hold)."""
    key = resolve(rt, ident)
    state_cache(rt).update(NS, key, lambda cur: {**(cur or {}), "compact_now": True, "hold": False})
    _emit(rt, key, action="compact")
    return {"key": key, "compact_now": True}


def run(rt, args: dict[str, Any], tenants: list[str] | None = None) -> Any:
    """Dispatch one command: ``{"action": ..., "session": ..., ...}``, on ``tenants``' sessions only
    (None: every tenant's; the recall API passes its caller's)."""
    action = args.get("action")
    if action == "list":
        rows = [_summary(rt, k, ledger.read(rt, k)) for k in _keys(rt, tenants)]
        return {"sessions": sorted(rows, key=lambda r: r["last_ts"] or 0, reverse=True)}
    if action not in ("show", "rollback", "pin", "unpin", "compact"):
        raise CommandError(f"unknown session action {action!r} (list, show, rollback, pin, unpin, compact)")
    key = resolve(rt, args.get("session", ""), tenants)  # another tenant's session is "no session"
    if action == "rollback":
        return rollback(rt, key, args.get("to"), apply=not args.get("dry_run"))
    if action in ("pin", "unpin"):
        return (pin if action == "pin" else unpin)(rt, key, args.get("target"))
    return show(rt, key) if action == "show" else compact(rt, key)
