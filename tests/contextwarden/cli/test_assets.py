"""Honest tools: `contextwarden doctor` and `contextwarden run` warn, with the fix, when the tiktoken
encodings or the embedding model are missing, and never try to download them to find out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MODEL_DIR, SHARED

CLI = [sys.executable, "-m", "contextwarden"]


def _env(tmp_path: Path, *, tiktoken: Path, model: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTEXTWARDEN_", "TIKTOKEN_", "DATA_GYM_"))
           and not k.lower().endswith("_proxy")}
    # HOME holds Chroma's model cache (~/.cache/chroma): an empty one. A download attempt would go to a
    # closed loopback port and leave files behind; the empty folders must stay empty.
    env.update(HOME=str(tmp_path / "user-home"), TIKTOKEN_CACHE_DIR=str(tiktoken), CONTEXTWARDEN_HOME=str(tmp_path / "cw"),
               CONTEXTWARDEN_MEMORY__MODEL_DIR=str(model), HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    return env


@pytest.fixture
def empty(tmp_path) -> dict[str, Path]:
    dirs = {name: tmp_path / name for name in ("tiktoken", "model", "user-home")}
    for d in dirs.values():
        d.mkdir()
    return dirs


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=120)


def _rows(out: str) -> dict[str, str]:
    """doctor's rows: what -> the whole line."""
    rows = {}
    for line in out.splitlines():
        for what in ("tiktoken cl100k_base", "tiktoken o200k_base", "embedding model"):
            if line[5:].startswith(what):
                rows[what] = line
    return rows


def test_doctor_warns_with_the_fix_when_tokenizer_and_model_are_missing(tmp_path, empty):
    r = _cli(["doctor"], _env(tmp_path, tiktoken=empty["tiktoken"], model=empty["model"]))
    assert r.returncode == 0, r.stdout + r.stderr  # warnings: the proxy runs, worse
    rows = _rows(r.stdout)
    assert set(rows) == {"tiktoken cl100k_base", "tiktoken o200k_base", "embedding model"}, r.stdout
    for what in ("tiktoken cl100k_base", "tiktoken o200k_base"):
        line = rows[what]
        assert line.startswith("WARN ") and not line.startswith("ok")
        assert f"not in {empty['tiktoken']}" in line and "set TIKTOKEN_CACHE_DIR" in line and "estimate" in line
        assert "downloaded on first use (needs internet)" in line
    model = rows["embedding model"]
    assert model.startswith("WARN ")
    assert str(empty["model"]) in model and "CONTEXTWARDEN_MEMORY__MODEL_DIR" in model and "lexical-only" in model
    assert str(empty["user-home"]) in model  # where Chroma's own cache was looked for
    assert [list(d.iterdir()) for d in empty.values()] == [[], [], []]  # nothing was downloaded, or tried


def test_doctor_reports_ok_and_where_with_the_assets_present(tmp_path, empty):
    r = _cli(["doctor"], _env(tmp_path, tiktoken=SHARED / "tiktoken", model=MODEL_DIR))
    assert r.returncode == 0, r.stdout + r.stderr
    rows = _rows(r.stdout)
    assert rows["tiktoken cl100k_base"].startswith("ok ") and str(SHARED / "tiktoken") in rows["tiktoken cl100k_base"]
    assert rows["embedding model"].startswith("ok ") and str(MODEL_DIR) in rows["embedding model"]
    assert "WARN" not in r.stdout


def test_run_warns_with_the_fix_before_starting(tmp_path, empty):
    r = _cli(["run", "--dry-run", "--port", "0"], _env(tmp_path, tiktoken=empty["tiktoken"], model=empty["model"]))
    assert r.returncode == 0, r.stderr
    warns = [line for line in r.stderr.splitlines() if line.startswith("contextwarden: warning: ")]
    assert len(warns) == 3, r.stderr
    assert any("tiktoken cl100k_base" in w and "TIKTOKEN_CACHE_DIR" in w for w in warns)
    assert any("tiktoken o200k_base" in w for w in warns)
    assert any("embedding model" in w and "CONTEXTWARDEN_MEMORY__MODEL_DIR" in w for w in warns)
    assert "mitmdump -s" in r.stdout
    assert [list(d.iterdir()) for d in empty.values()] == [[], [], []]
    # memory off: the model is not needed, so not a warning
    env = _env(tmp_path, tiktoken=SHARED / "tiktoken", model=empty["model"])
    r = _cli(["run", "--dry-run", "--port", "0"], {**env, "CONTEXTWARDEN_MEMORY__ENABLED": "false"})
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    r = _cli(["run", "--dry-run", "--port", "0"], _env(tmp_path, tiktoken=SHARED / "tiktoken", model=MODEL_DIR))
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
