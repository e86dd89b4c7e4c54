"""The redactor runs each pattern only on a text holding one of its literals (issue 19: it is on the
proxy's request path for every compressed result and stub preview): that must never change what is
redacted."""

from __future__ import annotations

from pathlib import Path

import pytest

from contextwarden.memory import secrets

from .test_memory_secrets import planted

ROOT = Path(__file__).resolve().parent.parent


def _texts() -> list[str]:
    texts = [text for _, text in planted().values()]
    for folder in ("src", "tests"):
        for p in sorted((ROOT / folder).rglob("*.py"))[:60]:
            t = p.read_text(errors="replace")
            texts += [t[i:i + 3000] for i in range(0, min(len(t), 30_000), 3000)]
    mixed = [secret for secret, _ in planted().values()]
    texts += [f"{a}\nexport API_TOKEN={b}\n{texts[i % len(texts)][:500]}" for i, (a, b) in enumerate(zip(mixed, mixed[1:]))]
    return texts


def test_every_match_of_a_pattern_holds_one_of_its_literals():
    for text in _texts():
        for kind, pat, lits in secrets._TOKENS:
            for m in pat.finditer(text):
                assert any(x in m.group(0) for x in lits), (kind, m.group(0))
        for kind, pat, lits in secrets._CONTEXT:
            for m in pat.finditer(text):
                assert any(x in m.group(0).lower() for x in lits), (kind, m.group(0))


def test_gated_redaction_equals_running_every_pattern(monkeypatch: pytest.MonkeyPatch):
    texts = _texts()
    gated = [secrets.redact_secrets(t) for t in texts]
    # "" is in every text: each pattern runs whatever the text holds (the redactor before the gating)
    monkeypatch.setattr(secrets, "_TOKENS", [(k, p, ("",)) for k, p, _ in secrets._TOKENS])
    monkeypatch.setattr(secrets, "_CONTEXT", [(k, p, ("",)) for k, p, _ in secrets._CONTEXT])
    every = [secrets.redact_secrets(t) for t in texts]
    assert gated == every
    assert sum(n for _, n in gated) >= len(planted()) - 5  # the planted secrets are found (not a vacuous check)
