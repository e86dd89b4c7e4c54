"""Finds the real Claude Code CLI, installing it with npm under ``<repo>/.cache/claude-code`` if absent.

Order: ``$CLAUDE_CODE_BIN`` (an explicit binary), then ``<repo>/.cache/claude-code``, then
``npm install --prefix <repo>/.cache/claude-code @anthropic-ai/claude-code@<version>``.
``$CLAUDE_CODE_VERSION`` picks the npm version (default: the one the tests were written against,
whose requests are in ../shared/eval/requests).
Missing npm is an error, not a skip: these tests are part of what must be shown.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "claude-code"
VERSION = os.environ.get("CLAUDE_CODE_VERSION", "2.1.197")
PACKAGE = "@anthropic-ai/claude-code"

API_KEY = "sk-ant-api03-e2eClaudeCodeKey-0123456789abcdef"  # what the tests give Claude Code
MARKER_FILE = "hello_warden.txt"  # a file in Claude Code's cwd that its `ls` tool call must find



@contextmanager
def install_lock(prefix: Path = CACHE) -> Iterator[None]:
    """One npm install into ``prefix`` at a time, across the suite's processes (the two CLIs' installs,
    into two prefixes, may run side by side: npm's own cache is safe for that)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with open(prefix.parent / f".install-{prefix.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _candidates(prefix: Path) -> list[Path]:
    nm = prefix / "node_modules"
    # the native binary the package ships per platform, then the launcher npm links into .bin
    return sorted(nm.glob("@anthropic-ai/claude-code-*/claude")) + [nm / ".bin" / "claude"]


def _usable(p: Path, marker: str = "Claude Code") -> bool:
    """Whether ``p --version`` runs and names ``marker`` (the Codex CLI's tests use it too)."""
    if not (p.is_file() and os.access(p, os.X_OK)):
        return False
    try:
        r = subprocess.run([str(p), "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and marker.lower() in r.stdout.lower()


def find_installed(prefix: Path = CACHE) -> Path | None:
    env = os.environ.get("CLAUDE_CODE_BIN")
    if env:
        p = Path(env).expanduser()
        if not _usable(p):
            pytest.fail(f"CLAUDE_CODE_BIN={env} is not a working Claude Code binary ('--version' failed)")
        return p
    return next((p for p in _candidates(prefix) if _usable(p)), None)


def install(prefix: Path = CACHE, version: str = VERSION, package: str = PACKAGE) -> None:
    """``npm install --prefix PREFIX package@version`` (the Codex CLI's tests use it too)."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not installed: the end-to-end tests need it to install "
                    f"{package} (install Node.js >= 18 with npm, or set the binary's *_BIN variable)")
    prefix.mkdir(parents=True, exist_ok=True)
    spec = f"{package}@{version}" if version else package
    cmd = [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--loglevel=error", spec]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        pytest.fail(f"`{' '.join(cmd)}` failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")


def claude_code_binary() -> Path:
    """The path of a working ``claude`` binary; installs it on first use. Fails the test if it cannot."""
    with install_lock():
        found = find_installed()
        if found is not None:
            return found
        install()
        found = find_installed()
        if found is None:
            pytest.fail(f"npm installed {PACKAGE} into {CACHE} but no working claude binary was found there")
        return found


def claude_env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    """A clean environment for the CLI: no proxy or Anthropic settings of the developer's leak in."""
    env = {k: v for k, v in os.environ.items()
           if not (k.upper().endswith("_PROXY") or k.startswith(("ANTHROPIC_", "CLAUDE_")))}
    env.update(HOME=str(home), ANTHROPIC_API_KEY=API_KEY, CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
               DISABLE_AUTOUPDATER="1", **extra)
    return env


def run_claude(binary: Path, tmp_path: Path, extra_env: dict[str, str],
               prompt: str = "list the files here", *, files: dict[str, str] | None = None,
               allowed_tools: str = "Bash", timeout: float = 180) -> subprocess.CompletedProcess:
    """``claude -p <prompt> --allowedTools Bash`` in a fresh cwd (holding MARKER_FILE and ``files``,
    name -> text) with a fresh HOME."""
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    (work / MARKER_FILE).write_text("contextwarden e2e\n")
    for name, text in (files or {}).items():
        (work / name).write_text(text)
    return subprocess.run([str(binary), "-p", prompt, "--allowedTools", allowed_tools], cwd=work,
                          env=claude_env(home, extra_env), capture_output=True, text=True, timeout=timeout)
