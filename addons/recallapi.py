"""mitmproxy addon: the recall API (:mod:`contextwarden.memory.api`) for the warden's runtime, under the
event server's token (whoever may watch the proxy may recall), or its own in ``cw_home/recall-api.json``.
"""

from __future__ import annotations

import logging

from contextwarden.core.runtime import Runtime
from contextwarden.memory import service as memory_service
from contextwarden.memory.api import RecallApi

from .eventserver import EventServer
from .perruntime import PerRuntime
from .warden import Warden

log = logging.getLogger(__name__)


class RecallApiServer(PerRuntime):
    what = "recall_api"
    without = "no recall API"

    def __init__(self, warden: Warden, events: EventServer | None = None) -> None:
        super().__init__(warden)
        self.events = events  # the EventServer addon, for its token

    def start(self, rt: Runtime) -> RecallApi:
        svc = getattr(self.events, "service", None)
        token = svc.token if svc is not None and svc.runtime is rt else None
        api = RecallApi(rt, lambda: memory_service.get_service(rt), token).start(publish=False)
        log.info(f"contextwarden: recall API on {api.host}:{api.port}")
        return api
