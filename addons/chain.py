"""contextwarden's addons that read and change the LLM API traffic, in their order.

mitmdump's script (``addons/contextwarden.py``) loads them behind the engine link, inert there while
the engine runs them in its own process (``cw_engine``, on by default); the engine
(``contextwarden.engine``) loads the same list. One list, so both run the same chain.
"""

from __future__ import annotations

from typing import Any

from .eventserver import EventServer
from .eventstream import EventStream
from .interceptor import Interceptor
from .metrics import MetricsServer
from .observer import Observer
from .outputguard import OutputGuard
from .recallapi import RecallApiServer
from .warden import Warden
from .websocket import WebSocketResponses


def engine_addons(warden: Warden) -> list[Any]:
    """The warden and what works for its runtime: requests, answers, the servers, mitmdump's output guard."""
    interceptor = Interceptor(warden)
    events = EventServer(warden)
    return [warden, interceptor, Observer(warden), WebSocketResponses(warden, interceptor), events,
            RecallApiServer(warden, events), MetricsServer(warden), EventStream(warden), OutputGuard()]
