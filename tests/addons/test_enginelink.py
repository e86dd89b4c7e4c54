"""The engine link's idle hand-shake (addons/enginelink.py, contextwarden/engine/server.py): after the runtime's
idle forget the engine gives its ring's pages back and tells mitmdump's side, which gives back the other one
(shared memory that counted in both processes' RSS). The two ends in one process, over a real socket pair
and real rings."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from typing import cast

from addons.enginelink import _end, _Engine, _Ready
from contextwarden.core import frames
from contextwarden.core.events import Event
from contextwarden.engine.server import Engine
from contextwarden.settings.proxy import ProxySection
from tests.support.proxy import ProxyProcess
from tests.support.wait import wait_until


def _held(ring: frames.Ring) -> int:
    return os.fstat(ring.fd).st_blocks * 512  # the memfd's pages in use


def test_after_the_idle_forget_both_rings_give_their_pages_back():
    to_engine, from_engine = frames.Ring.create(1 << 20), frames.Ring.create(1 << 20)
    assert to_engine is not None and from_engine is not None
    a, b = socket.socketpair()
    ready = cast(_Ready, {"proxy": ProxySection(), "passive": False, "pid": 0, "release_flows": False, "timeout_s": 5.0})
    proc = cast(subprocess.Popen[bytes], None)  # (no process: the engine's side runs here)
    link = _Engine(proc, a, ready, {}, (to_engine, from_engine))
    engine = Engine(b, (frames.Ring(os.dup(to_engine.fd)), frames.Ring(os.dup(from_engine.fd))))
    body = os.urandom(600_000)

    async def main() -> None:
        await link.connect()
        reader, engine.writer = await frames.open_stream(b)
        loop = asyncio.get_running_loop()
        assert link.send("request", 1, {"raw_content": body})  # through the ring each way, and read
        op, _, got = await frames.read(reader, engine.from_link) or ("", None, None)
        assert op == "request" and got["raw_content"] == body
        reply = asyncio.ensure_future(link.call("ask", None))
        assert (await frames.read(reader, engine.from_link) or ("",))[0] == "ask"
        engine._send("reply", 1, {"raw_content": body})
        assert await reply == {"raw_content": body}
        assert _held(to_engine) >= len(body) and _held(from_engine) >= len(body)
        engine._forgot(loop, Event("gc", {"reason": "idle"}))  # not the forget: nothing given back
        await asyncio.sleep(0.2)
        assert _held(to_engine) >= len(body) and _held(from_engine) >= len(body)
        # the forget's event, from the collector's thread
        await loop.run_in_executor(None, engine._forgot, loop, Event("gc", {"reason": "forget"}))
        for _ in range(100):
            if _held(to_engine) <= 8192:
                break
            await asyncio.sleep(0.02)
        assert _held(from_engine) <= 8192 and _held(to_engine) <= 8192
        assert link.send("request", 3, {"raw_content": body})  # and frames cross as before
        op, _, got = await frames.read(reader, engine.from_link) or ("", None, None)
        assert op == "request" and got["raw_content"] == body
        engine.writer.close()

    try:
        asyncio.run(main())
    finally:
        a.close()
        b.close()


def _ready(pid: int) -> _Ready:
    return cast(_Ready, {"proxy": ProxySection(), "passive": False, "pid": pid, "release_flows": False, "timeout_s": 5.0})


def test_the_link_agrees_to_a_recycle_only_with_nothing_in_flight_and_holds_what_comes_until_ready():
    """An engine that would exec itself asks (``recycle``): the link says no while a call waits or a flow of
    its own is not over; yes otherwise, and then frames and calls wait, in order, for the new engine's
    ``ready`` (a request is not failed open meanwhile)."""
    a, b = socket.socketpair()
    link = _Engine(cast(subprocess.Popen[bytes], None), a, _ready(1), {})
    flows: set[str] = {"f1"}
    link.quiet = lambda: not flows

    async def main() -> None:
        await link.connect()
        reader, writer = await frames.open_stream(b)

        async def answer(payload: bool) -> None:
            writer.writelines(frames.encode("recycle"))
            assert await frames.read(reader) == ("recycle", None, payload)

        waiting = asyncio.ensure_future(link.call("request", {"n": 1}))
        op, seq, _ = await frames.read(reader) or ("", None, None)
        await answer(False)  # a request in flight
        writer.writelines(frames.encode("reply", seq, {"n": 1}))
        assert await waiting == {"n": 1}
        await answer(False)  # a flow not ended (its answer still streams)
        flows.clear()
        await answer(True)
        assert link.hold is not None
        assert link.send("end", "f1", {"error": None})  # held, not lost
        held = asyncio.ensure_future(link.call("request", {"n": 2}))
        for _ in range(3):
            await asyncio.sleep(0)  # (the call's turns: up to its wait for the hold)
        assert not held.done() and link.held == [("end", "f1", {"error": None})]
        await answer(False)  # (asked again while holding: no)
        writer.writelines(frames.encode("ready", None, _ready(2)))  # the new engine
        assert await frames.read(reader) == ("end", "f1", {"error": None})
        op, seq, payload = await frames.read(reader) or ("", None, None)
        assert (op, payload) == ("request", {"n": 2}) and link.pid == 2 and link.hold is None
        writer.writelines(frames.encode("reply", seq, {"n": 2}))
        assert await held == {"n": 2}
        writer.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        a.close()
        b.close()


def test_ctrl_c_while_the_engine_starts_stops_mitmdump_and_the_engine(tmp_path):
    """mitmproxy's SIGINT handler runs on its event loop, which the start-up wait for the engine holds (up
    to 300 s: a slow machine, a first run fetching the tokenizers): Ctrl-C there did nothing."""
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        "import sys, time\nif 'contextwarden.engine' in sys.orig_argv:\n    time.sleep(600)\n")  # an engine that never answers
    p = ProxyProcess(tmp_path / "px", profile="default", env={"PYTHONPATH": str(slow)})
    p.launch()
    try:
        assert wait_until(lambda: subprocess.run(["pgrep", "-P", str(p.proc.pid)], capture_output=True).stdout.strip(), 120)
        engine = int(subprocess.run(["pgrep", "-P", str(p.proc.pid)], capture_output=True, text=True).stdout.split()[0])
        p.interrupt()
        assert p.proc.wait(30) == 1
        assert "stopped (Ctrl-C) while the engine started" in p.output_text()
        assert wait_until(lambda: not os.path.exists(f"/proc/{engine}"), 10)  # (killed and reaped by mitmdump)
    finally:
        p.stop()


def test_stopping_an_engine_slow_to_be_reaped_does_not_raise():
    """Beside two CPU-bound loops a killed engine took over 5 s to be reaped; the timeout escaped ``done`` and
    mitmdump's other addons never shut down. The link is closed all the same."""
    class Slow:
        killed = False

        def poll(self):
            return None

        def kill(self):
            self.killed = True

        def wait(self, timeout=None):
            raise subprocess.TimeoutExpired("engine", timeout)

    a, b = socket.socketpair()
    proc = Slow()
    _end(cast(subprocess.Popen, proc), a)
    assert proc.killed and a.fileno() == -1
    b.close()
