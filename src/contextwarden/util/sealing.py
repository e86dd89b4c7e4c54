"""Encryption at rest: AES-256-GCM over stored state values and memory documents.

The key (32 bytes, 64 hex digits or base64) comes from ``CONTEXTWARDEN_KEY`` or from the file
``state.key_file`` names; without one nothing is sealed. A sealed value is ``MAGIC + nonce(12) +
ciphertext+tag``; one that cannot be opened is a :class:`SealError` that says why. Values written before
a key was set are read as they are. Memory documents are sealed the same way and written as ``cw1:`` +
base64 (embeddings come from the plain text; the metadata Chroma filters on is not sealed).
"""

from __future__ import annotations

import base64
import binascii
import os
from contextlib import suppress
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"\x00cw1"
TEXT_PREFIX = "cw1:"
ENV = "CONTEXTWARDEN_KEY"


class SealError(RuntimeError):
    """A sealed value that cannot be opened (no key, wrong key, damaged), or a malformed key."""


def parse_key(text: str) -> bytes:
    s = text.strip()
    raw: bytes | None = None
    if len(s) == 64:
        with suppress(ValueError):
            raw = bytes.fromhex(s)
    if raw is None:
        with suppress(binascii.Error, ValueError):
            raw = base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    if raw is None or len(raw) != 32:
        raise SealError(f"the encryption key must be 32 bytes written as 64 hex digits or base64 (got {len(s)} characters)")
    return raw


def load_key(key_file: str | os.PathLike | None = None) -> bytes | None:
    """The key from the environment, else from ``key_file``; None when neither is set."""
    env = os.environ.get(ENV)
    if env:
        return parse_key(env)
    if key_file:
        p = Path(key_file).expanduser()
        try:
            return parse_key(p.read_text())
        except OSError as e:
            raise SealError(f"cannot read the key file {p}: {e}") from None
    return None


def new_key() -> str:
    """A fresh key, as 64 hex digits."""
    return os.urandom(32).hex()


class Sealer:
    def __init__(self, key: bytes | None) -> None:
        self.key = key
        self._aead = AESGCM(key) if key is not None else None

    @property
    def on(self) -> bool:
        return self._aead is not None

    def seal(self, data: bytes) -> bytes:
        if self._aead is None:
            return data
        nonce = os.urandom(12)
        return MAGIC + nonce + self._aead.encrypt(nonce, data, MAGIC)

    def open(self, blob: bytes) -> bytes:
        if not blob.startswith(MAGIC):
            return blob  # written before a key was set: plain
        if self._aead is None:
            raise SealError(f"stored data is encrypted and no key is set ({ENV} or state.key_file)")
        try:
            return self._aead.decrypt(blob[len(MAGIC):len(MAGIC) + 12], blob[len(MAGIC) + 12:], MAGIC)
        except InvalidTag:
            raise SealError(f"stored data cannot be decrypted with this key: wrong key ({ENV} or state.key_file)") from None

    def seal_text(self, text: str) -> str:
        if self._aead is None:
            return text
        return TEXT_PREFIX + base64.b64encode(self.seal(text.encode("utf-8"))).decode("ascii")

    def open_text(self, text: str) -> str:
        if not isinstance(text, str) or not text.startswith(TEXT_PREFIX):
            return text
        try:
            blob = base64.b64decode(text[len(TEXT_PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            return text  # a document that merely starts with the prefix
        if not blob.startswith(MAGIC):
            return text
        return self.open(blob).decode("utf-8")

