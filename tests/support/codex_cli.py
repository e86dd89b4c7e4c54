"""Finds the real Codex CLI, installing it with npm under ``<repo>/.cache/codex`` if absent, and runs it.

Order: ``$CODEX_BIN`` (an explicit binary), then ``<repo>/.cache/codex``, then
``npm install --prefix <repo>/.cache/codex @openai/codex@<version>``. ``$CODEX_VERSION`` picks the npm
version (default: the one the tests were written against). The native binary is
``node_modules/@openai/codex-linux-x64/vendor/<target>/bin/codex``. Missing npm is an error, not a skip.

Each run gets a fresh ``CODEX_HOME`` (its config, its login) and working directory; the proxy and
Codex's own settings of the developer never leak in. Codex's plugin and app sync are disabled: they
fetch from GitHub and chatgpt.com, which these offline tests do not serve.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .claude_code import ROOT, install, install_lock
from .claude_code import _usable as _usable_binary

CACHE = ROOT / ".cache" / "codex"
VERSION = os.environ.get("CODEX_VERSION", "0.169.0")
PACKAGE = "@openai/codex"
API_KEY = "sk-proj-e2eCodexKey-0123456789abcdef"  # what the tests give Codex
# features that reach hosts other than the Responses endpoint
_OFFLINE = ("--disable", "plugins", "--disable", "apps", "--disable", "remote_plugin")


def _candidates(prefix: Path) -> list[Path]:
    return sorted((prefix / "node_modules").glob("@openai/codex-*/vendor/*/bin/codex"))


def _usable(p: Path) -> bool:
    return _usable_binary(p, "codex-cli")


def codex_binary() -> Path:
    """The path of a working ``codex`` binary; installs it on first use. Fails the test if it cannot."""
    import pytest

    env = os.environ.get("CODEX_BIN")
    if env:
        if not _usable(Path(env)):
            pytest.fail(f"CODEX_BIN={env} is not a working Codex binary ('--version' failed)")
        return Path(env)
    with install_lock(CACHE):
        found = next((p for p in _candidates(CACHE) if _usable(p)), None)
        if found is None:
            install(CACHE, VERSION, PACKAGE)
            found = next((p for p in _candidates(CACHE) if _usable(p)), None)
        if found is None:
            pytest.fail(f"npm installed {PACKAGE} into {CACHE} but no working codex binary was found there")
        return found


def codex_env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not (k.upper().endswith("_PROXY") or k.startswith(("OPENAI_", "CODEX_", "SSL_CERT")))}
    env.update(CODEX_HOME=str(home), HOME=str(home), RUST_LOG="error", NO_COLOR="1", **extra)
    return env


def provider_args(base_url: str) -> list[str]:
    """``-c`` flags for a provider entry whose ``base_url`` is the proxy (reverse mode)."""
    return ["-c", "model_provider=cw", "-c", 'model_providers.cw.name="contextwarden"',
            "-c", f'model_providers.cw.base_url="{base_url}"', "-c", 'model_providers.cw.wire_api="responses"',
            "-c", 'model_providers.cw.env_key="OPENAI_API_KEY"']


def run_codex(binary: Path, tmp_path: Path, extra_env: dict[str, str], prompt: str, *, args: tuple[str, ...] | list[str] = (),
              files: dict[str, str] | None = None, login: bool = True, model: str = "gpt-5-codex",
              timeout: float = 90) -> subprocess.CompletedProcess:
    """``codex exec <prompt>`` in a fresh working directory holding ``files`` (name -> text), with a
    fresh CODEX_HOME; ``login``: first ``codex login --with-api-key`` (the key on stdin)."""
    work, home = tmp_path / "work", tmp_path / "codex-home"
    work.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (work / name).write_text(text)
    env = codex_env(home, {"OPENAI_API_KEY": API_KEY, **extra_env})
    if login:
        r = subprocess.run([str(binary), "login", "--with-api-key"], input=API_KEY + "\n", env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"codex login failed: {r.stdout}\n{r.stderr}"
    cmd = [str(binary), "exec", "--skip-git-repo-check", *_OFFLINE, "-m", model, *args, prompt]
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
