"""The opt-in census of the live proxy (CONTEXTWARDEN_CENSUS): one JSON line per census, with what
finding a leak needs."""

from __future__ import annotations

import gc

import orjson

from contextwarden.core import census
from tests.support.wait import wait_until


class _Cycle:
    def __init__(self) -> None:
        self.me = self
        self.body = b"x" * 100_000


def test_a_census_reports_sizes_garbage_and_the_heap(tmp_path, monkeypatch):
    out = tmp_path / "census.jsonl"
    monkeypatch.setenv("CONTEXTWARDEN_CENSUS", str(out))
    monkeypatch.setenv("CONTEXTWARDEN_CENSUS_S", "3600")  # only when asked (SIGUSR2's event)

    class Runtime:
        def __init__(self) -> None:
            self.queue = [1, 2, 3]
            self._memos = {"cache": {"a": 1}}

        def memo(self, name, factory):
            return self._memos.setdefault(name, factory())

    rt = Runtime()
    c = census.from_env(rt)
    try:
        census.watch(rt, "ring", {"x": 1, "y": 2})
        was = gc.isenabled()
        gc.disable()
        try:
            # another thread's gc.collect() (a background collector of a runtime an earlier test left)
            # may run at any moment: with DEBUG_SAVEALL set before the cycles become garbage, whichever
            # collection finds them leaves them in gc.garbage, where the census reads them
            gc.collect()
            cycles = [_Cycle() for _ in range(5)]
            real = census.collect_garbage

            def collect(*a, **k):
                old = gc.get_debug()
                gc.set_debug(old | gc.DEBUG_SAVEALL)
                try:
                    cycles.clear()
                    # every type: the suite's own garbage (hundreds of arrays and locks) outnumbers 5
                    return real(top=100_000)
                finally:
                    gc.set_debug(old)
                    gc.garbage.clear()

            monkeypatch.setattr(census, "collect_garbage", collect)
            c._now.set()  # what SIGUSR2 does
            wait_until(lambda: out.exists() and out.read_bytes().endswith(b"\n"), 30)
        finally:
            if was:
                gc.enable()
    finally:
        c.stop()
    rec = orjson.loads(out.read_bytes().splitlines()[0])
    assert rec["sizes"]["runtime"]["queue"] == 3 and rec["sizes"]["ring"] == {"len": 2}
    assert rec["memos"]["cache"] == {"len": 1}
    garbage = dict(rec["garbage"]["by_count"])
    assert garbage.get(f"{__name__}._Cycle") == 5 and rec["garbage"]["held_bytes_mb"] >= 0.5
    assert rec["rss_mb"] > 0 and rec["types"]["tracked"] > 0 and rec["types"]["by_count"]
