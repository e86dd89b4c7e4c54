"""mitmproxy addon: serves the recall API (:mod:`contextwarden.memory.api`) for the warden's runtime.

It uses the event server's token (``cw_home/tui.json``), so whoever may watch the proxy may recall from
it; without an event server it makes a token of its own (written, like the port, to
``cw_home/recall-api.json``, mode 0600). Restarts with the runtime, stops in ``done``; an API that
cannot start is logged and the proxy carries on without it.
"""

from __future__ import annotations

import logging

from contextwarden.memory import service as memory_service
from contextwarden.memory.api import RecallApi

log = logging.getLogger(__name__)


class RecallApiServer:
    def __init__(self, warden, events=None) -> None:
        self.warden = warden
        self.events = events  # the EventServer addon, for its token
        self.api: RecallApi | None = None

    def configure(self, updated) -> None:
        self._sync()

    def running(self) -> None:
        self._sync()

    def done(self) -> None:
        self._stop()

    def _sync(self) -> None:
        rt = self.warden.runtime
        if self.api is not None and self.api.runtime is rt:
            return
        self._stop()
        if rt is None:
            return
        svc = getattr(self.events, "service", None)
        token = svc.token if svc is not None and svc.runtime is rt else None
        try:
            self.api = RecallApi(rt, lambda rt=rt: memory_service.get_service(rt), token).start()
            log.info(f"contextwarden: recall API on {self.api.host}:{self.api.port}")
        except Exception as e:
            self.api = None
            log.error(f"contextwarden: recall API not started: {e}")
            rt.bus.emit("error", {"where": "recall_api", "message": str(e), "action": "no recall API"})

    def _stop(self) -> None:
        if self.api is not None:
            self.api.stop()
            self.api = None
