"""The proxy path never imports UI code: not Textual, not contextwarden.tui, not the CLI.

(``rich`` is not on the list: third-party libraries the proxy path uses, such as chromadb, import it.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx2

from tests.support.proxy import ProxyProcess
from tests.support.sdk import anthropic
from tests.support.upstream import StandIn

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "addons" / "contextwarden.py"
FORBIDDEN = ("textual", "contextwarden.tui", "contextwarden.cli")


def forbidden(modules) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))


def test_addon_script_modules_do_not_import_ui_code(tmp_path):
    """Load the script as mitmproxy would, build a runtime with every plugin, run the event server."""
    code = textwrap.dedent(f"""
        import json, runpy, sys, time
        ns = runpy.run_path({str(SCRIPT)!r})
        from contextwarden.core.runtime import Runtime
        from contextwarden.addons.eventserver import EventService
        rt = Runtime.from_profile("default", {str(tmp_path / "home")!r})
        svc = EventService(rt).start()
        rt.bus.emit("request", {{"tokens_in": 1}}, flow_id="f", session="s")
        time.sleep(0.2)  # (the server runs a moment with an event to send: what it imports then counts)
        svc.stop()
        rt.close()
        print(json.dumps({{"addons": [type(a).__name__ for a in ns["addons"]], "modules": sorted(sys.modules)}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["addons"] == ["EngineLink", "Warden", "Interceptor", "Observer", "WebSocketResponses", "EventServer",
                                "RecallApiServer", "MetricsServer", "EventStream", "OutputGuard", "Overhead", "UpstreamError", "Exposure"]
    mods = set(result["modules"])
    assert "contextwarden.addons.eventserver" in mods and "websockets.asyncio.server" in mods  # it did run
    assert forbidden(mods) == []


def test_mitmdump_carrying_traffic_has_no_ui_modules(tmp_path):
    dump = tmp_path / "dump_modules.py"
    out_file = tmp_path / "modules.json"
    dump.write_text(textwrap.dedent(f"""
        import json, sys

        class DumpModules:
            def done(self):
                with open({str(out_file)!r}, "w") as f:
                    json.dump(sorted(sys.modules), f)

        addons = [DumpModules()]
    """))
    with StandIn() as standin:
        with ProxyProcess(tmp_path / "px", profile="default", reverse=standin.url, extra_scripts=[dump]) as proxy:
            client = anthropic.Anthropic(api_key="sk-ant-boundary", base_url=proxy.url, max_retries=0,
                                         http_client=httpx2.Client(trust_env=False, timeout=60))
            client.messages.create(model="claude-sonnet-4-6", max_tokens=50, messages=[{"role": "user", "content": "hello there"}])
            assert proxy.wait_events(lambda e: e["type"] == "response")
        assert proxy.proc.returncode is not None
    mods = set(json.loads(out_file.read_text()))
    assert "contextwarden.addons.eventserver" in mods and "contextwarden.request.pipeline" in mods
    assert forbidden(mods) == []
