"""Where the offline evaluations and replays find ../shared's assets (the tiktoken cache, the embedding
model): on a user's machine tiktoken and Chroma download them instead."""

from __future__ import annotations

import os
from pathlib import Path


def shared_dir() -> Path | None:
    """``$CONTEXTWARDEN_SHARED``, else ``../shared`` next to the project checkout."""
    env = os.environ.get("CONTEXTWARDEN_SHARED")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "shared"
        if (cand / "eval").is_dir():
            return cand
    return None


def offline_assets(shared: Path | None) -> dict:
    """The memory settings that use ../shared's offline assets when present: the tiktoken cache (set in
    the environment) and the embedding model."""
    memory: dict = {}
    if shared is not None:
        if (shared / "tiktoken").is_dir():
            os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(shared / "tiktoken"))
        model = shared / "models" / "all-MiniLM-L6-v2" / "onnx"
        if (model / "model.onnx").is_file() and not os.environ.get("CONTEXTWARDEN_MEMORY__MODEL_DIR"):
            memory["model_dir"] = str(model)
    return memory
