"""Where the proxy listens, and who may use it when that is not this machine alone.

Without ``listen_host`` the proxy binds 127.0.0.1 (mitmproxy's default is every interface). Listening
elsewhere (``--set listen_host=0.0.0.0``, or a mode's own ``@host:port``) requires a proxy credential
(``proxyauth``): the one given, or one made for this install (user ``contextwarden``, the password in
``<cw_home>/proxy-credential``, mode 0600). ``--set cw_open_proxy=true`` listens without one, warned.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from pathlib import Path

from mitmproxy import ctx
from mitmproxy.addonmanager import Loader
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.connection import Address, Client
from mitmproxy.proxy import mode_specs
from mitmproxy.utils import asyncio_utils

from contextwarden.util.home import default_home, ensure_home, secret_file

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
USER = "contextwarden"
CREDENTIAL_FILE = "proxy-credential"
# the modes whose clients connect to the address listen_host gives (not transparent, WireGuard, local, tun)
LISTENING_MODES = ("regular", "reverse", "upstream", "socks5", "http3", "dns")


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name or an interface we cannot vouch for


def listen_hosts(modes: Sequence[str] | None, default: str) -> list[str]:
    """The address each mode's server listens on ("" = every interface)."""
    out = []
    for m in modes or ["regular"]:
        try:
            out.append(mode_specs.ProxyMode.parse(m).listen_host(default))
        except ValueError:
            continue
    return out


def _misplaced(mode: mode_specs.ProxyMode, addr: Address | None) -> bool:
    """A connection or listening address off loopback for a mode that listens where ``listen_host`` says."""
    if not addr:
        return False
    return mode.custom_listen_host is None and mode.type_name in LISTENING_MODES and not is_loopback(str(addr[0]))


def _proxyserver() -> Proxyserver | None:
    ps: Proxyserver | None = ctx.master.addons.get("proxyserver")  # type: ignore[no-untyped-call]  # unannotated in mitmproxy
    return ps


def _stop_the_first_start() -> None:
    """mitmproxy (12) loads scripts after its servers began to start: the start in progress read the
    address before this script could set it, and binds it once its address lookup returns. Stopped
    before that, no socket is ever opened on every interface (``_rebind`` starts them where the
    options say)."""
    ps = _proxyserver()
    start = getattr(type(ps), "setup_servers", None)
    for task in asyncio.all_tasks():
        if start is not None and getattr(task.get_coro(), "cr_code", None) is start.__code__ and not task.done():
            task.cancel()


class Exposure:
    def __init__(self) -> None:
        self.announced: tuple[str, str] | None = None
        self.forced = False  # listen_host was not given: this addon set loopback

    def load(self, loader: Loader) -> None:
        loader.add_option("cw_open_proxy", bool, False,
                          "Listen on a non-loopback address without a proxy credential (proxyauth). Off: "
                          "contextwarden requires one there.")

    def configure(self, updated: set[str]) -> None:
        if not updated & {"listen_host", "mode", "proxyauth", "cw_open_proxy", "cw_home"}:
            return
        o = ctx.options
        if not o.listen_host:
            self.forced = True
            o.update(listen_host=LOOPBACK)  # type: ignore[no-untyped-call]  # (unannotated in mitmproxy) configure runs again with it
            _stop_the_first_start()
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
            o.update(proxyauth=f"{USER}:{password}")  # type: ignore[no-untyped-call]  # (unannotated in mitmproxy) configure runs again and announces it
            self._say("info", f"contextwarden: listening on {where}: a proxy credential is required: user {USER!r}, "
                              f"password in {home / CREDENTIAL_FILE} (--set proxyauth=USER:PASS to choose one, "
                              "--set cw_open_proxy=true to listen without)")

    def client_connected(self, client: Client) -> None:
        """A connection to an address the user did not choose is closed unread: one accepted by a server
        that was listening before this script was loaded (another mitmproxy's order of start-up)."""
        if self.forced and _misplaced(client.proxy_mode, client.sockname):
            client.error = "contextwarden: not the address the proxy listens on"

    async def _rebind(self) -> None:
        """Start the servers whose first start was stopped, and restart any that listens where the
        options do not say (it started before ``listen_host`` was set)."""
        ps = _proxyserver()
        if ps is None:
            return
        while ps.servers.is_updating:  # the first start, stopping
            await asyncio.sleep(0.01)
        if not len(ps.servers):  # stopped before it made its servers
            await ps.servers.update([mode_specs.ProxyMode.parse(m) for m in ctx.options.mode])
            return
        moved = False
        for srv in list(ps.servers):
            if srv.is_running and any(_misplaced(srv.mode, a) for a in srv.listen_addrs):
                await srv.stop()
                moved = True
            if not srv.is_running:
                await srv.start()
        await ps.servers.changed.send()
        if moved:
            log.info(f"contextwarden: the proxy had started on every interface before this script loaded; "
                     f"it listens on {ctx.options.listen_host} now")

    def _say(self, level: str, message: str) -> None:
        if self.announced != (level, message):  # once per state, not on every option change
            self.announced = (level, message)
            getattr(log, level)(message)
