"""A finished flow is freed by reference counting (contextwarden.core.flowrelease), through a real mitmdump:
no full collection is needed for its request and response bodies to go (issue 19's pauses)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.proxy import ProxyProcess
from tests.support.upstream import StandIn
from tests.support.wait import wait_until

FLOWWATCH = Path(__file__).resolve().parents[1] / "support" / "flowwatch.py"


def _alive_after(proxy: ProxyProcess, requests: int, wait_s: float) -> dict:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True,
            "messages": [{"role": "user", "content": "hello " * 2000}]}
    headers = {"x-api-key": "sk-ant-flowwatch", "anthropic-version": "2023-06-01"}
    with httpx.Client(base_url=proxy.url, timeout=30) as client:  # one kept-alive connection, still open
        for _ in range(requests):
            r = client.post("/v1/messages", json=body, headers=headers)
            assert r.status_code == 200 and b"message_stop" in r.content
        with httpx.Client(base_url=proxy.url, timeout=30) as other:  # two of their own, closed
            other.post("/v1/messages", json=body, headers=headers)
        with httpx.Client(base_url=proxy.url, timeout=30) as other:
            other.post("/v1/messages", json=body, headers=headers, params={"stream": "1"})
        seen: dict = {}

        def freed() -> bool:
            seen.update(httpx.get(proxy.url + "/__flowwatch", timeout=30).json())
            return not seen["alive"]
        wait_until(freed, wait_s, interval=0.2)
        return seen


@pytest.mark.parametrize("release", [True, False])
def test_a_finished_flow_is_freed_without_a_full_collection(tmp_path, release):
    env = {"CONTEXTWARDEN_PIPELINE__RELEASE_FLOWS": str(release).lower(), "CONTEXTWARDEN_PIPELINE__GC_FULL_S": "0",
           "CONTEXTWARDEN_PIPELINE__GC_IDLE_S": "0", "CONTEXTWARDEN_MEMORY__ENABLED": "false"}
    with StandIn(sse_delay=0.005) as upstream:
        proxy = ProxyProcess(tmp_path, profile="claude-code", reverse=upstream.url, extra_scripts=[FLOWWATCH], env=env)
        proxy.start()
        try:
            seen = _alive_after(proxy, requests=5, wait_s=3.0 if release else 1.5)
        finally:
            proxy.stop()
    assert seen["finished"] == 7
    if release:
        assert seen["alive"] == []
    else:  # the same flows without the release: cyclic garbage, waiting for a full collection
        assert len(seen["alive"]) >= 5, seen
