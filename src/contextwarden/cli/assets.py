"""The files the proxy reads but does not ship: tiktoken's encodings and the embedding model.

Both are downloaded on first use by their libraries when missing, which needs internet; until then (or
for good, offline) token counts are an estimate and memory is lexical-only. ``contextwarden doctor`` and
``contextwarden run`` use :func:`check_assets` to say so, with the fix, instead of reporting ``ok``.
Nothing here downloads or loads anything: it looks for the files where the libraries will look.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..memory.embedder import chroma_cache_dir
from ..wire.tokens import OPENAI_ENCODING

# tiktoken names its cache files after the sha1 of the encoding's download URL
TIKTOKEN_URLS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}
MODEL_FILES = ("model.onnx", "tokenizer.json")  # what memory.embedder.Embedder reads


@dataclass(frozen=True)
class AssetCheck:
    what: str
    found: bool
    detail: str  # where it was found, or where it was looked for
    fix: str = ""  # what happens without it and how to provide it (empty when found)


def tiktoken_cache_dir() -> Path:
    """Where tiktoken reads (and downloads) its encodings: the same rule as tiktoken's own."""
    d = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    return Path(d) if d else Path(tempfile.gettempdir()) / "data-gym-cache"


def tiktoken_check(encoding: str) -> AssetCheck:
    cache = tiktoken_cache_dir()
    what = f"tiktoken {encoding}"
    url = TIKTOKEN_URLS.get(encoding)
    if url is None:
        return AssetCheck(what, False, f"unknown encoding {encoding!r}",
                          f"Token counts are an estimate; set tokens.encoding to one of {', '.join(TIKTOKEN_URLS)}")
    f = cache / hashlib.sha1(url.encode()).hexdigest()
    if f.is_file():
        return AssetCheck(what, True, f"found in {cache}")
    where = "TIKTOKEN_CACHE_DIR" if os.environ.get("TIKTOKEN_CACHE_DIR") else "TIKTOKEN_CACHE_DIR (unset: tiktoken's default)"
    return AssetCheck(
        what, False, f"not in {cache} ({where})",
        f"It is downloaded on first use (needs internet); until then token counts are an estimate "
        f"(4 chars/token). Offline: set TIKTOKEN_CACHE_DIR to a folder holding {f.name} (a copy of {url})")


def _has_model(d: Path) -> bool:
    return all((d / name).is_file() for name in MODEL_FILES)


def embedding_model_check(model_dir: str | os.PathLike | None, memory_enabled: bool = True) -> AssetCheck:
    """Where :func:`contextwarden.memory.embedder.load_embedder` will find the model (files only)."""
    what = "embedding model"
    looked = []
    if model_dir:
        d = Path(model_dir).expanduser()
        if _has_model(d):
            return AssetCheck(what, True, f"{d} (memory.model_dir)")
        looked.append(f"memory.model_dir {d} has no {' + '.join(MODEL_FILES)}")
    cache = chroma_cache_dir()
    if _has_model(cache):
        return AssetCheck(what, True, f"{cache} (chroma cache)" + (f"; {looked[0]}" if looked else ""))
    looked.append(f"not in chroma cache {cache}")
    if not memory_enabled:
        return AssetCheck(what, True, "; ".join(looked) + " (not needed: memory is off)")
    return AssetCheck(
        what, False, "; ".join(looked),
        "The proxy downloads all-MiniLM-L6-v2 (~80 MB) into the chroma cache when memory starts (needs "
        "internet); until then memory retrieval is lexical-only. Offline: set memory.model_dir "
        "(CONTEXTWARDEN_MEMORY__MODEL_DIR=/path/to/all-MiniLM-L6-v2/onnx) to a folder with "
        f"{' and '.join(MODEL_FILES)}")


def check_assets(settings) -> list[AssetCheck]:
    """The tokenizer encodings the profile counts with (its own and OpenAI's) and the embedding model."""
    encodings = dict.fromkeys([settings.tokens.encoding, OPENAI_ENCODING])
    m = settings.memory
    return [*(tiktoken_check(e) for e in encodings), embedding_model_check(m.model_dir, m.enabled)]


def warnings(settings) -> list[str]:
    """One line per missing asset, with its fix (empty when everything is there)."""
    return [f"{c.what}: {c.detail}. {c.fix}" for c in check_assets(settings) if not c.found]
