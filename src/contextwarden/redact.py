"""Keep credentials out of everything we write or show, and derive the tenant a request belongs to."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .lru import memoized
from .memory.secrets import looks_secret, redact_text

# Header (and query parameter) names whose values are credentials. Any name containing one of these,
# or any value that looks like a credential, never reaches an event.
_SECRET_HEADER_WORDS = ("authorization", "auth", "api-key", "apikey", "api_key", "cookie", "token", "secret",
                        "session-key", "password", "passwd", "credential", "signature", "account-id")
# whole words of a name (split at - and _): x-goog-api-key, x-foo-key, x-amz-sig
_SECRET_NAME_PARTS = {"key", "sig", "pwd", "jwt", "bearer"}
# names that carry no credential although they contain a word above (their values stay visible)
_NOT_SECRET = {"x-contextwarden-session", "x-contextwarden-agent", "x-contextwarden-bypass", "x-contextwarden-token",
               "anthropic-version", "anthropic-beta", "content-length", "max-tokens"}
# changes with every request although named like a key: never part of the tenant (the OpenAI SDKs send
# an Idempotency-Key with each POST)
_PER_REQUEST = {"idempotency-key", "x-idempotency-key", "x-request-id", "x-client-request-id"}
# an opaque token: long, base64/url-safe, mixing upper case, lower case and digits (a UUID is not one)
_OPAQUE = re.compile(r"(?=[^\s]*[A-Z])(?=[^\s]*[a-z])(?=[^\s]*\d)[A-Za-z0-9_\-+/=.~]{32,}")
REDACTED = "[redacted]"
# hidden from events although not credentials: Codex's own headers (x-codex-turn-metadata names the
# installation); they change per turn, so they are no part of the tenant either
_HIDDEN_PREFIXES = ("x-codex-",)


@memoized(1024)
def is_secret_name(name: str) -> bool:
    n = name.lower()
    if n in _NOT_SECRET:
        return False
    return any(w in n for w in _SECRET_HEADER_WORDS) or bool(_SECRET_NAME_PARTS & set(re.split(r"[-_.]", n)))


def is_secret_header(name: str, value: Any = None) -> bool:
    """A header whose name OR value looks like a credential (``x-custom-auth-value``, ``x-foo: sk-ant-...``)."""
    if is_secret_name(str(name)) or str(name).lower().startswith(_HIDDEN_PREFIXES):
        return True
    if not isinstance(value, str) or not value or str(name).lower() in _NOT_SECRET:
        return False
    return _secret_value(value)


@memoized(4096)  # the same header values come with every request of a client
def _known_secret(value: str) -> bool:
    return looks_secret(value)


def _secret_value(value: str) -> bool:
    v = value.strip().removeprefix("Bearer ").removeprefix("bearer ")
    return bool(_OPAQUE.fullmatch(v)) or _known_secret(value)


def redact_headers(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, REDACTED if is_secret_header(k, v) else v) for k, v in items]


def redact_path(path: str) -> str:
    """A request path with the credentials in its query string replaced (``?api_key=[REDACTED:...]``)."""
    return redact_text(path) if ("?" in path or "#" in path or ";" in path) else path


def credentials_of(headers: Iterable[tuple[str, str]], path: str = "") -> list[tuple[str, str]]:
    """Every credential a request carries: each auth-looking header (by name, or by a value in a known
    credential format) and each auth-looking query parameter, as sorted (where, value) pairs. Values
    that change with every request (request ids, idempotency keys) are left out: they would give every
    request a tenant of its own."""
    out = []
    for k, v in headers:
        name = str(k).lower()
        if not v or name in _NOT_SECRET or name in _PER_REQUEST or name.startswith("x-contextwarden-"):
            continue
        if is_secret_name(name) or _known_secret(v):
            out.append(("h:" + name, v.removeprefix("Bearer ").removeprefix("bearer ").strip()))
    query = urlsplit(path).query if path else ""
    for k, v in parse_qsl(query, keep_blank_values=False):
        if v and is_secret_name(k):
            out.append(("q:" + k.lower(), v))
    return sorted(out)


def tenant_id(credential: str | None, salt: str) -> str:
    """A salted hash of the credential: stable per key, useless to anyone who reads it."""
    if not credential:
        return "anonymous"
    return "t-" + hashlib.sha256((salt + "\0" + credential).encode()).hexdigest()[:16]


def tenant_of(headers: Iterable[tuple[str, str]], path: str, session: str | None, salt: str) -> str:
    """The tenant of a request: a salted hash of every credential it carries, so users of any auth
    scheme (``x-goog-api-key``, a cookie, ``?key=``) are told apart. A request with none gets a tenant of
    its own session's ("a-..."), which shares memory with nobody (a profile's ``memory.shared_workspace``
    is the way to share)."""
    headers = list(headers)
    for k, v in headers:
        if str(k).lower() == "chatgpt-account-id" and v:
            return tenant_id(v.strip(), salt)  # a ChatGPT plan's bearer token rotates; its account id does not
    creds = credentials_of(headers, path)
    if len(creds) == 1 and creds[0][0] in ("h:x-api-key", "h:authorization", "h:api-key"):
        return tenant_id(creds[0][1], salt)  # the same tenant as before for the common single-key case
    if creds:
        return tenant_id("\0".join(f"{w}={v}" for w, v in creds), salt)
    return "a-" + hashlib.sha256((salt + "\0anonymous\0" + str(session or "")).encode()).hexdigest()[:16]
