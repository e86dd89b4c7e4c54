"""One dialect class per API owns what differs between the APIs (src/contextwarden/wire/dialects/).

Each test checks one side of that: every API's request gets a History (the dialect names its history
key), nothing below the dialects imports one back, and no code outside them branches on an ApiKind.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import orjson

from contextwarden import hookimpl
from contextwarden.core.runtime import Runtime
from contextwarden.models.base import ApiKind
from contextwarden.request import lifecycle
from contextwarden.wire.dialects import ANTHROPIC, DIALECTS, OLLAMA_CHAT, OPENAI_CHAT, OPENAI_RESPONSES, dialect
from contextwarden.wire.dialects.openai_chat import Chat
from tests.support.stages import stage_runtime

ROOT = Path(__file__).resolve().parents[4]
PKG = ROOT / "src" / "contextwarden"


class Seen:
    """A stage that keeps the request's history as the stages see it."""

    def __init__(self) -> None:
        self.histories: list = []

    @hookimpl
    def cw_request(self, ctx) -> None:
        self.histories.append(ctx.history)


def _runtime(tmp_path, stage) -> Runtime:
    return stage_runtime(tmp_path / "home", [("probe", stage)], profile="codex")


def _send(rt: Runtime, inp, n: int):
    raw = orjson.dumps({"model": "gpt-5-codex", "input": inp, "stream": True})
    headers = [("content-type", "application/json"), ("authorization", "Bearer sk-test"),
               ("x-contextwarden-session", "responses-history")]
    ctx, _ = lifecycle.send(rt, ApiKind.OPENAI_RESPONSES, "api.openai.com", "/v1/responses", headers, raw, f"flow-{n}")
    return ctx


def test_a_responses_request_has_a_history_and_its_next_request_the_same_entries(tmp_path):
    seen = Seen()
    rt = _runtime(tmp_path, seen)
    try:
        items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix the bug"}]},
                 {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": "{\"cmd\": [\"ls\"]}"},
                 {"type": "function_call_output", "call_id": "c1", "output": "a.py b.py"}]
        ctx = _send(rt, items, 0)
        assert ctx.history is not None and seen.histories[-1] is ctx.history
        assert [e.obj for e in ctx.history.entries] == items
        assert ctx.request.input == items  # the request's items are its history's
        grown = items + [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "and now?"}]}]
        ctx2 = _send(rt, grown, 1)
        # the conversation hands the same entries (and what is remembered with them) to its next request
        assert all(a is b for a, b in zip(ctx2.history.entries, ctx.history.entries))
        assert len(ctx2.history.entries) == 4
        one = _send(rt, "just a string", 2)  # (an ``input`` string: a History without entries)
        assert one.history is not None and one.history.entries == []
    finally:
        rt.close()


def test_one_dialect_per_api_each_its_own_history_key():
    assert set(DIALECTS) == set(ApiKind)
    assert [dialect(k) for k in ApiKind] == [ANTHROPIC, OPENAI_CHAT, OPENAI_RESPONSES, OLLAMA_CHAT]
    assert dialect(ANTHROPIC) is ANTHROPIC and dialect("openai_chat") is OPENAI_CHAT
    assert isinstance(OLLAMA_CHAT, Chat) and OLLAMA_CHAT.kind is ApiKind.OLLAMA_CHAT
    assert {d.kind: d.history_key for d in DIALECTS.values()} == {
        ApiKind.ANTHROPIC: "messages", ApiKind.OPENAI_CHAT: "messages", ApiKind.OPENAI_RESPONSES: "input",
        ApiKind.OLLAMA_CHAT: "messages"}


def _imports(path: Path) -> set[str]:
    """Every module an import statement of ``path`` names (in functions too), relative ones resolved."""
    pkg = ["contextwarden", *path.relative_to(PKG).parent.parts]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = pkg[: len(pkg) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out |= {mod} | {f"{mod}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def test_nothing_below_the_dialects_imports_one():
    below = [PKG / "wire" / "conversation.py", PKG / "wire" / "validate.py", PKG / "memory" / "inject.py", *(PKG / "models").glob("*.py")]
    back = {str(p.relative_to(PKG)): sorted(m for m in _imports(p) if m.startswith("contextwarden.wire.dialects"))
            for p in below}
    assert {k: v for k, v in back.items() if v} == {}


def test_no_code_outside_the_dialects_branches_on_an_apikind():
    found = [f"{p.relative_to(ROOT)}:{i}" for top in ("src", "plugins", "addons", "tui") for p in (ROOT / top).rglob("*.py")
             if "dialects" not in p.parts
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"ApiKind\.\w+", line) and not line.strip().startswith("#")]
    assert found == []
