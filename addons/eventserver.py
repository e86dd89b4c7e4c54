"""Placeholder until the TUI's event server lands (issue 5)."""


class EventServer:
    def __init__(self, warden) -> None:
        self.warden = warden
