"""The redactor runs each pattern only on a text holding one of its literals (issue 19: it is on the
proxy's request path for every compressed result and stub preview): that must never change what is
redacted."""

from __future__ import annotations

from pathlib import Path

import pytest

from contextwarden.util import redact as secrets
from tests.contextwarden.util.test_redact import planted

ROOT = Path(__file__).resolve().parents[3]


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


def _pairs_texts() -> list[str]:
    """Texts dense in ``key <sep> value`` pairs: hinted and plain keys, keys of 80 characters and more,
    flags, quotes, separators across lines, values that start pairs of their own."""
    import random

    rnd = random.Random(19)
    keys = ["x", "api_key", "API_TOKEN", "apiKey", "token", "keyboard", "session_id", "passwd", "my.secret",
            "auth-header", "--token", "--api-key", '"password"', "'pwd'", "clientSecret", "sig", "dsn", "\u212aey",
            "s\u0130g", "privateKey", "data", "codes", "ticketNo", "a" * 79 + "token", "a" * 78 + "key",
            "x." + "b" * 70 + "secret", "--" + "c" * 76 + "pwd", "y" * 90 + "token"]
    seps = ["=", ": ", " = ", "=>", ":", "  :  ", " ", "\n=\n", "=\n  ", "\t:\t", '"=', "':"]
    vals = ["abc12345678", '"s3cr3t-value-xyz"', "'p@ssw0rd!'", "${TOKEN}", 'os.environ["X"]', "x",
            "API_TOKEN=zzzzzzzzzz1", "required", "12345678", "token: abcdefghijk", '"a\nb"', "a:b:c=d",
            "self.token", "[1,2]", "(x)", "secret=hunter2222", "--password hunter2xx"]
    texts = []
    for _ in range(6000):
        texts.append("".join(rnd.choice(["", " ", '"', "'", "-", ".", "\u00e9", "("]) + rnd.choice(keys) + rnd.choice(seps)
                             + rnd.choice(vals) + rnd.choice([" ", "\n", ", ", ";", "}", " -- ", '"', "'", ""])
                             for _ in range(rnd.randint(1, 8))))
    return texts


def test_pairs_read_from_hints_equal_reading_every_pair(monkeypatch: pytest.MonkeyPatch):
    """The pair loop starts each search near the next hint, on a key pattern that does not backtrack:
    the same redactions as the pattern before it reading every pair (an empty hint is everywhere)."""
    texts = _texts() + _pairs_texts()
    fast = [secrets.redact_secrets(t) for t in texts]
    import re

    before = secrets._ASSIGN.pattern.replace(r"{0,80}+)", r"{0,80})").replace(r"\s*+(?:=>|=|:)\s*+", r"\s*(?:=>|=|:)\s*")
    assert before != secrets._ASSIGN.pattern
    monkeypatch.setattr(secrets, "_ASSIGN", re.compile(before))
    monkeypatch.setattr(secrets, "_HINT", re.compile(""))
    every = [secrets.redact_secrets(t) for t in texts]
    assert fast == every
    assert sum(n for _, n in every) > 5000  # pairs are redacted (not a vacuous check)
