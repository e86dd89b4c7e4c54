"""Keep credentials out of everything we write or show."""

from __future__ import annotations

import hashlib
from typing import Iterable

# Header names whose values are credentials. Anything matching these never reaches an event.
_SECRET_HEADER_WORDS = ("authorization", "api-key", "apikey", "x-api-key", "cookie", "token", "secret", "session-key",
                        "account-id")
# Codex's own headers (x-codex-turn-metadata names the installation, ...): kept out of events too
_SECRET_HEADER_PREFIXES = ("x-codex-",)


def is_secret_header(name: str) -> bool:
    n = name.lower()
    return any(w in n for w in _SECRET_HEADER_WORDS) or n.startswith(_SECRET_HEADER_PREFIXES)


def redact_headers(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, "[redacted]" if is_secret_header(k) else v) for k, v in items]


def credential_of(headers) -> str | None:
    """The caller's credential (API key or bearer token), for tenant hashing only."""
    # a ChatGPT plan's account id first: its bearer token is a short-lived OAuth token that rotates
    for name in ("chatgpt-account-id", "x-api-key", "authorization", "api-key"):
        v = headers.get(name)
        if v:
            return v.removeprefix("Bearer ").removeprefix("bearer ").strip()
    return None


def tenant_id(credential: str | None, salt: str) -> str:
    """A salted hash of the credential: stable per key, useless to anyone who reads it."""
    if not credential:
        return "anonymous"
    return "t-" + hashlib.sha256((salt + "\0" + credential).encode()).hexdigest()[:16]
