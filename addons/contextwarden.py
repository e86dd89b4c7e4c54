"""The mitmproxy script: ``mitmdump -s addons/contextwarden.py [--set cw_profile=observe-only]``."""

import os
import sys

# mitmproxy puts this script's folder first on sys.path while it loads the script; this file's
# name would then shadow the `contextwarden` package it imports.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
for _name in [n for n, m in list(sys.modules.items()) if getattr(m, "__file__", None) == os.path.abspath(__file__) and n == "contextwarden"]:
    del sys.modules[_name]

from contextwarden.addons.counttokens import CountTokens  # noqa: E402
from contextwarden.addons.eventserver import EventServer  # noqa: E402
from contextwarden.addons.exposure import Exposure  # noqa: E402
from contextwarden.addons.flowlines import FlowLines  # noqa: E402
from contextwarden.addons.eventstream import EventStream  # noqa: E402
from contextwarden.addons.interceptor import Interceptor  # noqa: E402
from contextwarden.addons.metrics import MetricsServer  # noqa: E402
from contextwarden.addons.observer import Observer  # noqa: E402
from contextwarden.addons.outputguard import OutputGuard  # noqa: E402
from contextwarden.addons.recallapi import RecallApiServer  # noqa: E402
from contextwarden.addons.warden import Warden  # noqa: E402
from contextwarden.addons.websocket import WebSocketResponses  # noqa: E402

warden = Warden()
interceptor = Interceptor(warden)

events = EventServer(warden)
# Exposure: listen on loopback unless told otherwise; OutputGuard: no secret in mitmdump's own output
addons = [warden, interceptor, CountTokens(warden), Observer(warden), WebSocketResponses(warden, interceptor), events,
          RecallApiServer(warden, events), MetricsServer(warden), EventStream(warden), Exposure(), OutputGuard(), FlowLines()]
