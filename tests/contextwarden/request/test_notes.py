"""``ctx.notes`` is typed: every key the code uses is declared in notes.Notes, and a request through the
built-in stages leaves only declared keys, each holding a value of its declared type."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

from contextwarden.models.base import ApiKind
from contextwarden.request.notes import KEYS, Notes
from tests.support.stages import Harness, anthropic_tool_loop, settings_overrides

ROOT = Path(__file__).resolve().parents[3]
USE = re.compile(r"notes(?:\.get|\.setdefault|\.pop)?\(?\[?\s*\"([a-z_]+)\"")
CONST = re.compile(r"^(?:_NOTE|NOTE|START_NOTE)\s*=\s*\"([a-z_]+)\"", re.M)  # the keys modules name as constants


def _sources():
    for d in ("src/contextwarden", "plugins", "addons"):
        yield from (ROOT / d).rglob("*.py")


def test_every_key_the_code_uses_is_declared():
    used: dict[str, str] = {}
    for p in _sources():
        text = p.read_text()
        for rx in (USE, CONST):
            for m in rx.finditer(text):
                used.setdefault(m.group(1), str(p.relative_to(ROOT)))
    assert {"clean_text", "cleared", "compaction", "level", "memory_source", "session_control"} <= set(used)
    undeclared = {k: where for k, where in used.items() if k not in KEYS and k != "target_tokens"}
    assert not undeclared, f"ctx.notes keys not declared in contextwarden/request/notes.py: {undeclared}"


def _matches(value, tp) -> bool:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_matches(value, t) for t in typing.get_args(tp))
    origin = dict if typing.is_typeddict(tp) else typing.get_origin(tp) or tp
    if tp is typing.Any or value is None:
        return True
    if not isinstance(value, origin):
        return False
    if typing.is_typeddict(tp):  # a declared record: its keys, each of its type
        hints = typing.get_type_hints(tp)
        return set(value) <= set(hints) and all(_matches(v, hints[k]) for k, v in value.items())
    args = typing.get_args(tp)
    if origin is list and args:
        return all(_matches(v, args[0]) for v in value)
    return True


def test_a_request_through_the_stages_leaves_declared_keys_of_their_types(tmp_path):
    stages = ["budget", "strip", "tagging", "clearing", "compression", "compaction", "recall"]
    h = Harness(tmp_path, overrides=settings_overrides(
        window=20_000, stages=stages,
        clearing={"enabled": True, "trigger_tokens": 4000, "keep_recent": 2, "clear_at_least": 500, "min_result_tokens": 100},
        compaction={"enabled": True, "summariser": "extractive", "soft_threshold": 0.3, "hard_threshold": 0.4,
                    "target": 0.25, "protect_recent_turns": 1, "min_span_tokens": 500}))
    try:
        sent = h.send(ApiKind.ANTHROPIC, anthropic_tool_loop(8, result_words=400))
        notes = sent.ctx.notes
        assert {"transport", "clean_text", "tags", "clearing", "compaction"} <= set(notes), sorted(notes)
        hints = typing.get_type_hints(Notes)
        for k, v in notes.items():
            assert k in KEYS, f"undeclared ctx.notes key {k!r}"
            assert _matches(v, hints[k]), f"ctx.notes[{k!r}] is a {type(v).__name__}, declared {hints[k]}"
    finally:
        h.close()
