"""Where the offline evaluations and replays find ../shared's assets (the tiktoken cache, the embedding
model): on a user's machine tiktoken and Chroma download them instead."""

from __future__ import annotations

import os
from pathlib import Path

# how long a replay or an evaluation waits for tiktoken to load before estimating: under load the proxy's 15 s
# limit made runs count 4 characters a token, whose thresholds fall elsewhere (figures that moved with the
# machine: a LongMemEval history counted 124,553 tokens where tiktoken gives 105,128)
TOKENIZER_WAIT_S = 600.0


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
