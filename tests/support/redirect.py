"""Test-only mitmproxy script: sends requests for the real API hosts to a local stand-in upstream.

    mitmdump -s addons/contextwarden.py -s tests/support/redirect.py \
        --set redirect_to=http://127.0.0.1:PORT --set connection_strategy=lazy

Load it AFTER contextwarden's script: mitmproxy runs a hook through the addons in load order, so
contextwarden classifies the request by its real host (api.anthropic.com) before this script
changes where the connection goes. Only the connection target changes (host, port, scheme); the
request's headers, including ``Host``, stay exactly as the client sent them.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from mitmproxy import ctx, http

DEFAULT_HOSTS = "api.anthropic.com,api.openai.com,chatgpt.com"


class Redirect:
    def load(self, loader) -> None:
        loader.add_option("redirect_to", str, "", "Stand-in upstream URL (http://127.0.0.1:PORT) for the API hosts.")
        loader.add_option("redirect_hosts", str, DEFAULT_HOSTS, "Comma-separated hosts to redirect.")
        loader.add_option("redirect_block_others", bool, False,
                          "Answer 502 to requests for any other non-loopback host instead of connecting "
                          "(clients that also call home: the Codex CLI syncs plugins from GitHub).")

    def request(self, flow: http.HTTPFlow) -> None:
        target = ctx.options.redirect_to
        if not target or flow.response is not None:
            return
        hosts = {h.strip().lower() for h in ctx.options.redirect_hosts.split(",") if h.strip()}
        if flow.request.host.lower() not in hosts:
            if ctx.options.redirect_block_others and flow.request.host not in ("127.0.0.1", "localhost", "::1"):
                flow.response = http.Response.make(502, b"offline test: not redirected", {"content-type": "text/plain"})
            return
        t = urlsplit(target)
        if t.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"redirect_to must be a loopback URL, not {target!r}")
        # RequestData fields directly: the `host` property would also rewrite the Host header
        flow.request.data.scheme = (t.scheme or "http").encode()
        flow.request.data.host = t.hostname
        flow.request.data.port = t.port or (443 if t.scheme == "https" else 80)


addons = [Redirect()]
