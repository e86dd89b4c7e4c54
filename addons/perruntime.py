"""An addon that runs one service for the warden's current runtime: started once the runtime exists,
replaced with it, stopped in ``done``. A discovery file (``publish``: ``tui.json``, the recall API's) is
written only once the proxy listens, so a second proxy that fails to bind never replaces the first's.
A service that cannot start is logged and reported (an ``error`` event); the proxy carries on."""

from __future__ import annotations

import logging
from typing import Any

from contextwarden.core.runtime import Runtime

from .warden import Warden

log = logging.getLogger(__name__)


class PerRuntime:
    what = "service"  # for the log and the error event
    without = ""  # what the proxy goes without when it cannot start (the error event's action)

    def __init__(self, warden: Warden) -> None:
        self.warden = warden
        self.service: Any = None
        self._for: Any = None  # the runtime the service was made for
        self.listening = False  # the proxy listens (``running``): services publish their discovery files

    def start(self, rt: Runtime) -> Any:
        """The service for ``rt`` (it has a ``stop()``), or None when ``rt``'s settings want none."""
        raise NotImplementedError

    def configure(self, updated: set[str]) -> None:
        self._sync()

    def running(self) -> None:
        self.listening = True
        if self.warden.runtime is self._for:
            self._publish()
        self._sync()

    def done(self) -> None:
        self._stop()

    def _sync(self) -> None:
        rt = self.warden.runtime
        if rt is self._for:
            return
        self._stop()
        self._for = rt
        if rt is None:
            return
        try:
            self.service = self.start(rt)
            if self.listening:
                self._publish()
        except Exception as e:
            self.service = None
            log.error(f"contextwarden: {self.what} not started: {e}")
            rt.bus.emit("error", {"where": self.what, "message": str(e), "action": self.without or f"no {self.what}"})

    def _publish(self) -> None:
        publish = getattr(self.service, "publish", None)
        if publish is not None:
            publish()

    def _stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None
        self._for = None
