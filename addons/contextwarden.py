"""The mitmproxy script: ``mitmdump -s addons/contextwarden.py [--set cw_profile=observe-only]``."""

import os
import sys

# mitmproxy puts this script's folder first on sys.path while it loads the script; this file's
# name would then shadow the `contextwarden` package it imports.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
if getattr(sys.modules.get("contextwarden"), "__file__", None) == os.path.abspath(__file__):
    del sys.modules["contextwarden"]

from contextwarden.addons.chain import engine_addons  # noqa: E402
from contextwarden.addons.enginelink import EngineLink  # noqa: E402
from contextwarden.addons.exposure import Exposure  # noqa: E402
from contextwarden.addons.overhead import Overhead  # noqa: E402
from contextwarden.addons.upstreamerror import UpstreamError  # noqa: E402
from contextwarden.addons.warden import Warden  # noqa: E402

warden = Warden()
# EngineLink hands the LLM API flows to the engine process (cw_engine, the default), where the chain
# runs; with --set cw_engine=false the chain runs here, in mitmdump's process. Exposure: listen on
# loopback unless told otherwise; OutputGuard (in the chain): no secret in mitmdump's own output, and
# no line per flow unless asked for.
addons = [EngineLink(), *engine_addons(warden), Overhead(), UpstreamError(), Exposure()]
