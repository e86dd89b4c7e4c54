"""The data directory (``cw_home``): logs, state, memory, the TUI token and the tenant salt."""

from __future__ import annotations

import os
import secrets
import threading
from contextlib import suppress
from pathlib import Path

import orjson
import platformdirs


def default_home() -> Path:
    env = os.environ.get("CONTEXTWARDEN_HOME")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("contextwarden"))


def ensure_home(path: str | os.PathLike | None) -> Path:
    """The data directory, made this user's only. The one place that sets who may read what this
    process (and the engine, memory and embedding processes it starts, which inherit it) writes: umask
    077, so every file is 0600 and every folder 0700 from creation (events, state, originals, Chroma's
    files, recorded bodies, exports). A home an older version left open (0755, files 0644) is closed
    once, everything under it included: nothing under it stays reachable by another user."""
    os.umask(0o077)
    home = Path(path).expanduser() if path else default_home()
    home.mkdir(parents=True, exist_ok=True)
    if home.stat().st_mode & 0o077:
        with suppress(PermissionError):  # another user's home, read (contextwarden search --home): not ours to change
            _close(home)
    return home


def _close(home: Path) -> None:
    """Folders 0700 and files 0600 (an executable one 0700) under ``home``, ``home`` first."""
    home.chmod(0o700)
    for root, dirs, files in os.walk(home):
        for d in dirs:
            Path(root, d).chmod(0o700)
        for f in files:
            p = Path(root, f)
            if not p.is_symlink():
                p.chmod(0o700 if p.stat().st_mode & 0o100 else 0o600)


def secret_file(home: Path, name: str, nbytes: int = 32) -> str:
    """Read a per-install secret, creating it with mode 0600 on first use."""
    p = home / name
    if p.exists():
        return p.read_text().strip()
    value = secrets.token_hex(nbytes)
    _create_private(p, value.encode())
    return value


def _create_private(path: Path, data: bytes) -> None:
    """A new file (an existing one is an error) holding ``data``, mode 0600 from creation."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        f.write(data)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable by this user only (mode 0600 from creation): the
    files that hold a token (``tui.json``, ``recall-api.json``)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.unlink(missing_ok=True)
    _create_private(tmp, data)
    os.replace(tmp, path)


def publish(path: Path, info: dict) -> None:
    """Write a discovery file (``tui.json``, ``recall-api.json``): ``info`` and this process's pid. Only
    once the proxy listens: a second proxy that fails to start must not replace the running one's."""
    write_private(path, orjson.dumps({**info, "pid": os.getpid()}))


def unpublish(path: Path, token: str) -> None:
    """Remove a discovery file this process wrote (its pid and token in it); another process's stays."""
    with suppress(OSError, ValueError):
        info = orjson.loads(path.read_bytes())
        if info.get("pid") == os.getpid() and info.get("token") == token:
            path.unlink()
