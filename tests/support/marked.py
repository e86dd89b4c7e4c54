"""Runs a command with a mark in its environment and returns once it and every process it started are gone
(its engine, memory process and workers inherit the mark; they end after it, on their sockets' close)."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from .wait import wait_until


def marked_pids(mark: str) -> list[int]:
    """Processes started with ``CW_TEST_MARK=mark`` in their environment."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if f"CW_TEST_MARK={mark}".encode() in (d / "environ").read_bytes().split(b"\0"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def run_marked(cmd: list[str], env: dict[str, str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd)`` (text output captured); asserts that nothing it started outlives it by 30 s."""
    mark = uuid.uuid4().hex
    done = subprocess.run(cmd, env={**env, "CW_TEST_MARK": mark}, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kw)
    assert wait_until(lambda: not marked_pids(mark), 30), f"{cmd[:3]} left processes behind"
    return done
