"""A real ``chroma run`` server for tests, on a port the OS picks (the CLI chromadb installs)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from .proxy import free_port
from .wait import wait_until


class ChromaServer:
    def __init__(self, workdir: Path) -> None:
        self.path = Path(workdir) / "chroma-server"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ChromaServer:
        exe = Path(sys.executable).with_name("chroma")
        self.proc = subprocess.Popen([str(exe), "run", "--path", str(self.path), "--host", "127.0.0.1", "--port", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
        if not wait_until(self._up, 60, interval=0.2):
            self.__exit__()
            raise RuntimeError("chroma server did not start")
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"chroma server exited with {self.proc.returncode}")
        try:
            urllib.request.urlopen(f"{self.url}/api/v2/heartbeat", timeout=1).read()
            return True
        except OSError:
            return False

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None
