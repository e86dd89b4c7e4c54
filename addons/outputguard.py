"""mitmdump's own output (the flow lines, the log) without the secrets a URL can carry (``?key=...``):
a redacting writer in front of the dumper's and the terminal log's streams
(:func:`contextwarden.util.scrub.scrub_once`, the events' redaction).

The per-flow lines are off unless asked for (they cost the event loop CPU per request, and
contextwarden's events say more): ``flow_detail`` 0 when the user left it at its default; back with
``--set cw_flow_lines=true`` (``contextwarden run --flow-lines``), ``-v``, or ``flow_detail`` 2 or more.
"""

from __future__ import annotations

from typing import IO, Any

from mitmproxy import ctx

from contextwarden.util.scrub import scrub_once


class _Redacting:
    """A text stream that redacts what is written to it, then writes it to ``inner``."""

    def __init__(self, inner: IO[str]) -> None:
        self.inner = inner

    def write(self, s: str) -> int:
        self.inner.write(scrub_once(s) if isinstance(s, str) else s)
        return len(s)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding...
        return getattr(self.inner, name)


def _redact(holder: Any, stream: str) -> None:
    """``holder``'s text stream behind a :class:`_Redacting` (once; not a missing holder or stream)."""
    inner = getattr(holder, stream, None)
    if not isinstance(inner, (_Redacting, type(None))):
        setattr(holder, stream, _Redacting(inner))


class OutputGuard:
    def load(self, loader: Any) -> None:
        loader.add_option("cw_flow_lines", bool, False,
                          "print mitmdump's line per flow (off by default: it costs the proxy CPU per request)")

    def running(self) -> None:
        self.install()
        self.flow_lines()

    def configure(self, updated: set[str]) -> None:
        self.install()
        if "cw_flow_lines" in updated:
            self.flow_lines()

    @staticmethod
    def flow_lines() -> None:
        opts: Any = ctx.options
        if "flow_detail" not in opts:  # not mitmdump (no dumper): nothing prints flows
            return
        if opts.cw_flow_lines:
            if opts.flow_detail == 0:
                opts.update(flow_detail=1)
        elif not opts.has_changed("flow_detail"):
            opts.update(flow_detail=0)

    @staticmethod
    def install() -> None:
        master = getattr(ctx, "master", None)
        if master is None:
            return
        _redact(master.addons.get("dumper"), "outfp")
        _redact(getattr(master.addons.get("termlog"), "logger", None), "file")
