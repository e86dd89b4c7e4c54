"""``contextwarden doctor``: is everything a proxy needs here, and where did each piece come from?"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ._common import add_home_profile, home_of, mitmproxy_confdir

# tiktoken names its cache files after the sha1 of the encoding's download URL
_TIKTOKEN_URLS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check the CA, Python and mitmproxy, tokenizers, the embedding model and the data dir")
    add_home_profile(p)
    p.add_argument("--confdir", default=None, help="mitmproxy's confdir (default ~/.mitmproxy)")
    p.set_defaults(func=run)


def tiktoken_cache_dir() -> Path:
    d = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    return Path(d) if d else Path(tempfile.gettempdir()) / "data-gym-cache"


def _v(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


def checks(args) -> list[tuple[bool, str, str]]:
    """(ok, what, detail) rows; ok False only for what stops the proxy or loses data."""
    out: list[tuple[bool, str, str]] = []
    out.append((sys.version_info >= (3, 12), "python", f"{sys.version.split()[0]} at {sys.executable}"))
    out.append((_v("mitmproxy").split(".")[0] >= "12", "mitmproxy", _v("mitmproxy")))
    ca = mitmproxy_confdir(args.confdir) / "mitmproxy-ca-cert.pem"
    out.append((True, "mitmproxy CA", f"{ca}" if ca.exists() else f"not created yet: the first `contextwarden run` writes {ca}"))

    home = home_of(args)
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / ".doctor-probe"
        probe.write_text("ok")
        probe.unlink()
        out.append((True, "data dir", f"{home} (writable)"))
    except OSError as e:
        out.append((False, "data dir", f"{home}: not writable: {e}"))

    from contextwarden.settings import SettingsError, load_settings

    try:
        settings = load_settings(args.profile, home)
        out.append((True, "profile", f"{settings.name}: {settings.description or '-'}"))
    except SettingsError as e:
        out.append((False, "profile", str(e)))
        settings = None

    cache = tiktoken_cache_dir()
    for enc, url in _TIKTOKEN_URLS.items():
        f = cache / hashlib.sha1(url.encode()).hexdigest()
        if f.exists():
            out.append((True, f"tiktoken {enc}", f"found in {cache}"))
        else:
            out.append((True, f"tiktoken {enc}", f"not in {cache}: downloaded on first use (needs internet); "
                                                 "without it token counts are a reported estimate"))

    model_dir = settings.memory.model_dir if settings else None
    try:
        from contextwarden.memory.embedder import load_embedder

        emb, msg = load_embedder(model_dir)
        out.append((True, "embedding model", msg if emb is None else f"all-MiniLM-L6-v2: {emb.source}"))
    except ImportError as e:
        out.append((True, "embedding model", f"memory module unavailable: {e}"))

    out.append((True, "chromadb", f"{_v('chromadb')}; store: " + (settings.memory.chroma_url if settings and settings.memory.chroma_url
                                                                  else f"embedded at {home / 'chroma'}")))
    from contextwarden.pluginmanager import make_plugin_manager

    pm = make_plugin_manager(None)
    errs = getattr(pm, "cw_errors", {})
    out.append((not errs, "plugins", ", ".join(n for n, _ in pm.list_name_plugin()) + (f"; FAILED: {errs}" if errs else "")))
    return out


def run(args) -> int:
    rows = checks(args)
    for ok, what, detail in rows:
        print(f"{'ok ' if ok else 'BAD'} {what:<18} {detail}")
    return 0 if all(ok for ok, _, _ in rows) else 1
