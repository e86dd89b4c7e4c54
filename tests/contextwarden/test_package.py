"""Importing the package sets up the process: numpy's BLAS runs on one thread (contextwarden/__init__.py), unless
the user set its threads."""

from __future__ import annotations

import os
import subprocess
import sys

THREADS = "import os, contextwarden, numpy; print(os.environ['OPENBLAS_NUM_THREADS'], len(os.listdir('/proc/self/task')))"


def _run(env: dict[str, str]) -> list[str]:
    return subprocess.run([sys.executable, "-c", THREADS], env=env, capture_output=True, text=True,
                          check=True, timeout=120).stdout.split()


def test_blas_runs_on_one_thread_unless_the_user_says_otherwise():
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    # no BLAS thread beside the main one: on a busy machine a second waits for a core, spinning
    assert _run(env) == ["1", "1"]
    assert _run({**env, "OPENBLAS_NUM_THREADS": "2"}) == ["2", str(min(2, os.cpu_count() or 1))]
