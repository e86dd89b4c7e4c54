"""A session's context versions and the user's controls over them (docs/session-control.md).

Two records per conversation (``tenant|session|agent``) in the runtime state: the versions (namespace
``session_versions``, read by the commands only: ``{"versions": [...]}``, fields in the doc) and the
controls every request reads (namespace ``session``, small)::

    {"next": 4,                      # the next version number
     "off": {"clearing": [tool ids], "compaction": [decision hashes]},   # decisions not re-applied
     "hold": false,                  # after a rollback: no new decision while the request fits the window
     "compact_now": false,           # the next request compacts and clears whatever the thresholds say
     "pins": [{"id": 1, "kind": "tool" | "index" | "text", "value": ..., "ts": ...}], "pin_next": 2}

A stage that makes a decision calls :func:`record_decision` with ``refs``, the keys of its own stored
records; one re-applying them asks :meth:`Control.applied` which of them a rollback turned off. Every
version keeps ``off`` as it was right after it, so a rollback to version X turns off every decision not
applied at X; a rollback is a version too, so rolling back to the one before it puts the decisions back.
Stages read a :class:`Control` once per request (:func:`control`: one state-cache lookup).
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from ..request.notes import Control
from ..store.statecache import state_cache
from ..util.lru import LRU
from ..wire.history import session_key

NS = "session"  # the controls every request reads
NS_VERSIONS = "session_versions"  # the version list, read by the commands
MAX_VERSIONS = 500
_NOTE = "session_control"

# A preview (rollback cost, count_tokens of another state) runs the re-apply path under a record of its
# own: (session key, record) while it runs, on this thread.
_override: contextvars.ContextVar[tuple[str, dict] | None] = contextvars.ContextVar("cw_session_override", default=None)


def last_requests(runtime) -> LRU:
    """The runtime's memo of the last live request of each session (what previews re-apply decisions to)."""
    return runtime.memo("sessionctl.last", lambda: LRU(256))


def control(ctx, live: bool = False) -> Control:
    """The session's controls for this request (read once per request). ``live``: a request that
    goes upstream with new decisions (not a fall-back, count_tokens or a preview): remembered as the
    session's latest request, which previews start from."""
    got = ctx.notes.get(_NOTE)
    if got is not None:
        return got
    key = session_key(ctx)
    ov = _override.get()
    if ov is not None and ov[0] == key:
        record = ov[1]
    else:
        record = state_cache(ctx.runtime).get(NS, key) or {}
        if live:
            _remember(ctx, key)
    c = ctx.notes[_NOTE] = Control(key, record, memo=ctx.runtime.memo("sessionctl.applied", lambda: LRU(4096)))
    return c


def _remember(ctx, key: str) -> None:
    # what the request was, without its body (kept as bytes by runtime.bodies, read back for a preview):
    # a parsed body per session would be thousands of objects for the collector to walk
    lite = replace(ctx, original={}, request=None, history=None, notes={}, stage_results=[], blocked=None,
                   deadline=None, budget_ms=None, late_threads=set(), held_events=None, request_bytes=None, auth={},
                   message_raw=None, raw_exact=False, known_messages=0)
    last_requests(ctx.runtime).put(key, lite)


def last_request(runtime, key: str):
    """The session's latest live request (a context without its body: see preview.latest), or None."""
    return last_requests(runtime).peek(key)


def live_sessions(runtime) -> list[str]:
    """The sessions with a live request since the runtime started (the newest 256)."""
    return [str(k) for k, _ in last_requests(runtime).items()]


@contextmanager
def override(key: str, record: dict[str, Any]) -> Iterator[None]:
    """``with override(key, record):`` stages of this thread see ``record`` as the session's controls."""
    tok = _override.set((key, record))
    try:
        yield
    finally:
        _override.reset(tok)


# -- writing ------------------------------------------------------------------------------------------


def _bump(cur: dict[str, Any] | None, version: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the control record after ``version``, the version numbered, with its ``off``)."""
    cur = dict(cur or {})
    version = dict(version)
    n = int(cur.get("next") or 1)
    off = {k: list(v) for k, v in (cur.get("off") or {}).items()}
    if version.get("kind") == "decision":
        stage = version["stage"]
        new = set(version.get("refs") or ())
        if stage in off:  # a decision made again is applied again
            off[stage] = [r for r in off[stage] if r not in new]
    elif "set_off" in version:
        off = version.pop("set_off")
    off = {k: v for k, v in off.items() if v}
    version = {**version, "n": n, "ts": version.get("ts") or time.time(), "off": off}
    cur.update(next=n + 1, off=off)
    if version.get("kind") == "decision":
        cur["hold"] = False
    return cur, version


def append_version(runtime, key: str, version: dict[str, Any], extra: dict[str, Any] | None = None,
                   also: Sequence[tuple[str, str, Any]] = ()) -> dict[str, Any]:
    """Number ``version`` and store it: the control record (atomically: the number, ``off``, and
    ``extra`` fields), then the version list (namespace ``session_versions``, read by the commands
    only: the control record every request reads stays small), in one transaction with ``also``
    (``(ns, key, fn)`` updates stored first: the stage's own records of the decision). Returns the
    stored version."""
    made: dict[str, Any] = {}

    def bump(cur):
        new, v = _bump(cur, version)
        if extra:
            new.update(extra)
        made["v"] = v
        return new

    def listed(cur):
        v = made["v"]  # (bump ran first, in the same transaction)
        return {"versions": ([x for x in (cur or {}).get("versions") or [] if x.get("n") != v["n"]] + [v])[-MAX_VERSIONS:]}

    state_cache(runtime).update_many([*also, (NS, key, bump), (NS_VERSIONS, key, listed)])
    return made["v"]


def read(runtime, key: str) -> dict[str, Any]:
    """The session's control record with its ``versions`` (the commands' view)."""
    store = state_cache(runtime)
    return {**(store.get(NS, key) or {}), "versions": (store.get(NS_VERSIONS, key) or {}).get("versions") or []}


def record_decision(ctx, stage: str, *, trigger: str | None, tokens_before: int | None, tokens_after: int | None,
                    messages: list[int] | None = None, tool_ids: list[str] | None = None, refs: list[str] | None = None,
                    span: tuple[int, int] | None = None, also: Sequence[tuple[str, str, Any]] = (),
                    **extra: Any) -> int | None:
    """Append a decision of ``stage`` as the session's next version; returns its number (None in a
    preview, which records nothing). ``refs``: the stage's own record keys this decision wrote;
    ``also``: the stage's own ``(ns, key, fn)`` updates that store them, committed with the version
    (one transaction; in a preview, made alone, as the stage would have made them)."""
    if _override.get() is not None:
        if also:
            state_cache(ctx.runtime).update_many(list(also))
        return None
    v: dict[str, Any] = {"kind": "decision", "stage": stage, "trigger": trigger, "tokens_before": tokens_before,
                         "tokens_after": tokens_after, "messages": sorted(set(messages or ())),
                         "tool_ids": list(tool_ids or ()), "refs": list(refs or ()), "flow_id": ctx.flow_id}
    if span is not None:
        v["span"] = list(span)
    v.update(extra)
    stored = append_version(ctx.runtime, session_key(ctx), v, also=also)
    ctx.notes.pop(_NOTE, None)
    return int(stored["n"])


def consume_compact_now(ctx) -> None:
    """The compact-now request was served (the stage that decides last calls it)."""
    c = ctx.notes.get(_NOTE)
    if _override.get() is not None or (c is not None and not c.compact_now):
        return

    def clear(cur):
        if not cur or not cur.get("compact_now"):
            return cur
        return {**cur, "compact_now": False}

    state_cache(ctx.runtime).update(NS, session_key(ctx), clear)


def decision_refs(versions: list[dict[str, Any]], upto: int | None = None) -> set[tuple[str, str]]:
    """(stage, ref) of every decision among ``versions`` (up to version ``upto`` included)."""
    return {(v["stage"], r) for v in versions if v.get("kind") == "decision" and (upto is None or v["n"] <= upto)
            for r in v.get("refs") or ()}


def _off_pairs(rec: dict[str, Any]) -> set[tuple[str, str]]:
    """(stage, ref) of every decision the record's (or a version's) ``off`` turns off."""
    return {(s, r) for s, refs in (rec.get("off") or {}).items() for r in refs}


def off_at(rec: dict[str, Any], version: int) -> dict[str, list[str]]:
    """The ``off`` a rollback to ``version`` sets: every decision not applied at that version."""
    versions = rec.get("versions") or []
    at = next((v for v in reversed(versions) if v["n"] <= version), None)
    on = decision_refs(versions, version) - _off_pairs(at or {})
    out: dict[str, list[str]] = {}
    for s, r in sorted(decision_refs(versions) - on):
        out.setdefault(s, []).append(r)
    return out


def applied_versions(rec: dict[str, Any]) -> list[int]:
    """The decision versions whose records are applied now (not turned off)."""
    off = _off_pairs(rec)
    return [v["n"] for v in rec.get("versions") or [] if v.get("kind") == "decision"
            and any((v["stage"], r) not in off for r in v.get("refs") or ())]
