"""Where the proxy listens, and who may use it when that is not this machine alone.

mitmproxy listens on every interface when ``listen_host`` is not set; a proxy that forwards requests
with their credentials and keeps the conversations' memory must not be reachable from the network by
accident. So ``mitmdump -s addons/contextwarden.py`` binds to 127.0.0.1 when no ``listen_host`` is given
(the default of ``contextwarden run`` too), and says so at start.

Listening elsewhere is an explicit choice (``--set listen_host=0.0.0.0``, or a mode's own ``@host:port``),
and then the proxy requires a proxy credential (mitmproxy's ``proxyauth``): the one given, or else one
made for this install (user ``contextwarden``, the password in ``<cw_home>/proxy-credential``, mode
0600, never logged). ``--set cw_open_proxy=true`` listens without one, with a warning.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from pathlib import Path

from mitmproxy import ctx
from mitmproxy.utils import asyncio_utils

from contextwarden.home import default_home, ensure_home, secret_file

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
USER = "contextwarden"
CREDENTIAL_FILE = "proxy-credential"


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name or an interface we cannot vouch for


def listen_hosts(modes, default: str) -> list[str]:
    """The address each mode's server listens on ("" = every interface)."""
    from mitmproxy.proxy import mode_specs

    out = []
    for m in modes or ["regular"]:
        try:
            out.append(mode_specs.ProxyMode.parse(m).listen_host(default))
        except ValueError:
            continue
    return out


class Exposure:
    def __init__(self) -> None:
        self.announced: tuple | None = None

    def load(self, loader) -> None:
        loader.add_option("cw_open_proxy", bool, False,
                          "Listen on a non-loopback address without a proxy credential (proxyauth). Off: "
                          "contextwarden requires one there.")

    def configure(self, updated: set[str]) -> None:
        if not updated & {"listen_host", "mode", "proxyauth", "cw_open_proxy", "cw_home"}:
            return
        o = ctx.options
        if not o.listen_host:
            o.update(listen_host=LOOPBACK)  # configure runs again with it
            # mitmproxy (12) starts its servers while scripts load: one may already listen everywhere
            asyncio_utils.create_task(self._rebind(), name="contextwarden rebind", keep_ref=True)
            return
        exposed = [h or "every interface" for h in listen_hosts(o.mode, o.listen_host) if not is_loopback(h)]
        if not exposed:
            self._say("info", f"contextwarden: listening on {o.listen_host} only (this machine); "
                              "--set listen_host=0.0.0.0 to listen on every interface (a proxy credential is then required)")
            return
        where = ", ".join(exposed)
        if o.proxyauth:
            self._say("info", f"contextwarden: listening on {where}: clients must give the proxy credential (proxyauth)")
        elif o.cw_open_proxy:
            self._say("warning", f"contextwarden: listening on {where} WITHOUT a proxy credential (cw_open_proxy): "
                                 "anyone who can reach this port can use it")
        else:
            home = ensure_home(Path(o.cw_home).expanduser() if o.cw_home else default_home())
            password = secret_file(home, CREDENTIAL_FILE, 24)
            o.update(proxyauth=f"{USER}:{password}")  # configure runs again and announces it
            self._say("info", f"contextwarden: listening on {where}: a proxy credential is required: user {USER!r}, "
                              f"password in {home / CREDENTIAL_FILE} (--set proxyauth=USER:PASS to choose one, "
                              "--set cw_open_proxy=true to listen without)")

    async def _rebind(self) -> None:
        """Restart the servers that started before ``listen_host`` was set and listen on every interface."""
        from mitmproxy.proxy import mode_specs

        ps = ctx.master.addons.get("proxyserver")
        if ps is None:
            return
        while ps.servers.is_updating:  # let a start in progress finish: it read the old address
            await asyncio.sleep(0.02)
        exposed = [a for srv in ps.servers for a in srv.listen_addrs if not is_loopback(str(a[0]))]
        if not exposed:
            return
        modes = [mode_specs.ProxyMode.parse(m) for m in ctx.options.mode]
        await ps.servers.update([])
        await ps.servers.update(modes)
        log.info(f"contextwarden: the proxy had started on every interface before this script loaded; "
                 f"it listens on {ctx.options.listen_host} now")

    def _say(self, level: str, message: str) -> None:
        if self.announced != (level, message):  # once per state, not on every option change
            self.announced = (level, message)
            getattr(log, level)(message)
