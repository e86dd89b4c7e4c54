"""mitmdump's per-flow lines are off by default (they cost the proxy's event loop CPU per request) and
come back when asked for (addons/outputguard.py)."""

from __future__ import annotations

import io

from mitmproxy.addons.dumper import Dumper
from mitmproxy.test import taddons, tflow

from contextwarden.addons.outputguard import OutputGuard
from contextwarden.cli.run import mitmdump_argv


def _printed(apply: bool = True, **opts) -> str:
    out = io.StringIO()
    dumper, lines = Dumper(out), OutputGuard()
    with taddons.context(dumper, lines) as tctx:
        if opts:
            tctx.configure(lines, **opts)
        if apply:
            lines.running()
        dumper.response(tflow.tflow(resp=True))
    return out.getvalue()


def test_flow_lines_are_off_by_default():
    assert _printed() == ""
    assert "GET" in _printed(apply=False)  # control: mitmdump alone prints the same flow's line


def test_asking_for_flow_lines_brings_them_back():
    assert "GET" in _printed(cw_flow_lines=True)
    assert "GET" in _printed(flow_detail=2)  # -v (or a detail above the default) is kept
    assert _printed(flow_detail=0) == ""  # -q too


def test_run_passes_flow_lines_on_request():
    import argparse
    base = dict(listen_host="127.0.0.1", port=8080, profile="default", mode="regular", home=None, plugins=None,
                confdir=None, mitmdump_args=[])
    assert "cw_flow_lines=true" not in mitmdump_argv(argparse.Namespace(**base, flow_lines=False))
    assert "cw_flow_lines=true" in mitmdump_argv(argparse.Namespace(**base, flow_lines=True))


# (mitmdump itself printing no flow line: tests/e2e/test_transparency.py, through the shared observe-only proxy)
