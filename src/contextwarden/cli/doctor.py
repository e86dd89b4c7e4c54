"""``contextwarden doctor``: is everything a proxy needs here, and where did each piece come from?

The files the proxy reads but does not ship, tiktoken's encodings and the embedding model, are
downloaded on first use by their libraries (which needs internet); until then token counts are an
estimate and memory is lexical-only. :func:`check_assets` (doctor, and ``run``'s warnings) says so, with
the fix, looking for the files where the libraries will look, without downloading or loading anything.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ..core.pluginmanager import make_plugin_manager
from ..memory.embedder import chroma_cache_dir, load_embedder
from ..settings import Settings, SettingsError, load_settings
from ..wire.tokens import OPENAI_ENCODING
from ._common import add_home_profile, home_of, mitmproxy_confdir

OK, WARN, BAD = "ok", "WARN", "BAD"
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


def tiktoken_check(encoding: str) -> AssetCheck:
    # where tiktoken reads (and downloads) its encodings: the same rule as tiktoken's own
    d = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    cache = Path(d) if d else Path(tempfile.gettempdir()) / "data-gym-cache"
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


def register(sub) -> None:
    p = sub.add_parser("doctor")
    add_home_profile(p)
    p.add_argument("--confdir", default=None, help="mitmproxy's confdir (default ~/.mitmproxy)")
    p.set_defaults(func=run)


def _v(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


def _ok(good: bool) -> str:
    return OK if good else BAD


def checks(args) -> list[tuple[str, str, str]]:
    """(status, what, detail) rows: BAD for what stops the proxy or loses data, WARN for what makes it
    work worse (an estimate instead of token counts, lexical-only memory), with the fix."""
    ca = mitmproxy_confdir(args.confdir) / "mitmproxy-ca-cert.pem"
    out = [(_ok(sys.version_info >= (3, 12)), "python", f"{sys.version.split()[0]} at {sys.executable}"),
           (_ok(_v("mitmproxy").split(".")[0] >= "12"), "mitmproxy", _v("mitmproxy")),
           (OK, "mitmproxy CA", f"{ca}" if ca.exists() else f"not created yet: the first `contextwarden run` writes {ca}")]

    home = home_of(args)
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / ".doctor-probe"
        probe.write_text("ok")
        probe.unlink()
        out.append((OK, "data dir", f"{home} (writable)"))
    except OSError as e:
        out.append((BAD, "data dir", f"{home}: not writable: {e}"))

    try:
        settings = load_settings(args.profile, home)
        out.append((OK, "profile", f"{settings.name}: {settings.description or '-'}"))
    except SettingsError as e:
        out.append((BAD, "profile", str(e)))
        settings = Settings()  # the defaults: the assets below are still worth checking

    for c in check_assets(settings):
        if not c.found:
            out.append((WARN, c.what, f"{c.detail}. {c.fix}"))
        elif c.what == "embedding model" and "not needed" not in c.detail:  # its files are there: do they load?
            emb, msg = load_embedder(settings.memory.model_dir, download=False)  # (never downloads)
            out.append((WARN, c.what, msg) if emb is None else (OK, c.what, f"all-MiniLM-L6-v2: {emb.source}"))
        else:
            out.append((OK, c.what, c.detail))

    out.append((OK, "chromadb", f"{_v('chromadb')}; store: " + (settings.memory.chroma_url if settings.memory.chroma_url
                                                                else f"embedded at {home / 'chroma'}")))
    pm = make_plugin_manager(None)
    errs = getattr(pm, "cw_errors", {})
    out.append((_ok(not errs), "plugins", ", ".join(n for n, _ in pm.list_name_plugin()) + (f"; FAILED: {errs}" if errs else "")))
    return out


def run(args) -> int:
    rows = checks(args)
    for status, what, detail in rows:
        print(f"{status:<4} {what:<18} {detail}")
    return 1 if any(status == BAD for status, _, _ in rows) else 0
