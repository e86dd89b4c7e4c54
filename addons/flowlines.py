"""mitmdump's per-flow lines off unless asked for (they cost the event loop CPU per request, and
contextwarden's events say more): ``flow_detail`` 0 when the user left it at its default; back with
``--set cw_flow_lines=true`` (``contextwarden run --flow-lines``), ``-v``, or ``flow_detail`` 2 or more.
"""

from __future__ import annotations

from typing import Any

from mitmproxy import ctx


class FlowLines:
    def load(self, loader: Any) -> None:
        loader.add_option("cw_flow_lines", bool, False,
                          "print mitmdump's line per flow (off by default: it costs the proxy CPU per request)")

    def running(self) -> None:
        self.apply()

    def configure(self, updated: set[str]) -> None:
        if "cw_flow_lines" in updated:
            self.apply()

    @staticmethod
    def apply() -> None:
        opts: Any = ctx.options
        if "flow_detail" not in opts:  # not mitmdump (no dumper): nothing prints flows
            return
        if opts.cw_flow_lines:
            if opts.flow_detail == 0:
                opts.update(flow_detail=1)
        elif not opts.has_changed("flow_detail"):
            opts.update(flow_detail=0)
