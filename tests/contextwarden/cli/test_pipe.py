"""A command whose reader goes away (``contextwarden search ... | head``) exits quietly, not with a
BrokenPipeError traceback."""

from __future__ import annotations

import subprocess
import sys


def test_a_closed_pipe_ends_the_command_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "contextwarden", "config", "--profile", "claude-code"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the command writes its first line
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode(errors="replace")[-2000:]
    assert proc.returncode == 0
