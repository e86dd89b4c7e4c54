"""Test-wide set-up: offline assets from ../shared, and a fresh cw_home for every test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CONTEXTWARDEN_SHARED", ROOT.parent / "shared")).resolve()
MODEL_DIR = SHARED / "models" / "all-MiniLM-L6-v2" / "onnx"
EVAL_DIR = SHARED / "eval"

# tiktoken then never downloads; the embedding model is read from ../shared
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))
os.environ.setdefault("CONTEXTWARDEN_MEMORY__MODEL_DIR", str(MODEL_DIR))
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


@pytest.fixture(autouse=True)
def cw_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "cw-home"
    home.mkdir()
    monkeypatch.setenv("CONTEXTWARDEN_HOME", str(home))
    return home


@pytest.fixture
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"../shared is missing at {SHARED}: tests read offline assets and eval data from it")
    return SHARED
