"""``contextwarden doctor``: is everything a proxy needs here, and where did each piece come from?"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version

from ..core.pluginmanager import make_plugin_manager
from ..memory.embedder import load_embedder
from ..settings import Settings, SettingsError, load_settings
from ._common import add_home_profile, home_of, mitmproxy_confdir
from .assets import check_assets

OK, WARN, BAD = "ok", "WARN", "BAD"


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
    out: list[tuple[str, str, str]] = []
    out.append((_ok(sys.version_info >= (3, 12)), "python", f"{sys.version.split()[0]} at {sys.executable}"))
    out.append((_ok(_v("mitmproxy").split(".")[0] >= "12"), "mitmproxy", _v("mitmproxy")))
    ca = mitmproxy_confdir(args.confdir) / "mitmproxy-ca-cert.pem"
    out.append((OK, "mitmproxy CA", f"{ca}" if ca.exists() else f"not created yet: the first `contextwarden run` writes {ca}"))

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
        elif c.what == "embedding model" and "not needed" not in c.detail:
            out.append(_load_model(settings.memory.model_dir, c.detail))
        else:
            out.append((OK, c.what, c.detail))

    out.append((OK, "chromadb", f"{_v('chromadb')}; store: " + (settings.memory.chroma_url if settings.memory.chroma_url
                                                                else f"embedded at {home / 'chroma'}")))
    pm = make_plugin_manager(None)
    errs = getattr(pm, "cw_errors", {})
    out.append((_ok(not errs), "plugins", ", ".join(n for n, _ in pm.list_name_plugin()) + (f"; FAILED: {errs}" if errs else "")))
    return out


def _load_model(model_dir, where: str) -> tuple[str, str, str]:
    """The model's files are there: do they load? (never downloads)"""
    emb, msg = load_embedder(model_dir, download=False)
    if emb is None:
        return WARN, "embedding model", msg
    return OK, "embedding model", f"all-MiniLM-L6-v2: {emb.source}"


def run(args) -> int:
    rows = checks(args)
    for status, what, detail in rows:
        print(f"{status:<4} {what:<18} {detail}")
    return 1 if any(status == BAD for status, _, _ in rows) else 0
