"""``LiveProxy`` (``contextwarden eval --live``) under a home whose memory socket path would pass AF_UNIX's limit."""

from __future__ import annotations

from contextwarden.offline.memory.evaluation import live_proxy
from tests.conftest import MODEL_DIR


def test_a_live_proxy_reaches_its_memory_process_under_a_long_home(tmp_path):
    home = tmp_path / ("a-long-eval-home-" * 6)
    assert len(str(home / "home" / "run" / "memory-4194304-1.sock").encode()) > 108  # sun_path's size
    with live_proxy(home, {"model_dir": str(MODEL_DIR)}, {}) as (proxy, _):
        proxy.settle(0)  # the memory process answered over its socket: ready, and nothing left to store
        socks = [e.data["socket"] for e in proxy.events() if e.type == "memory_status" and e.data.get("socket")]
        assert socks and not socks[-1].startswith(str(home))  # in a private temp dir: cw_home/run's is too long
