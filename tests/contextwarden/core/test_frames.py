"""The frames between mitmdump's process and the engine (contextwarden/core/frames.py): whole frames of
any size come through in order, the end of the stream reads as None, and a frame is read in large steps
(asyncio's transport reads 256 KB a turn of the loop by default: a 600 KB request took three turns).
With a ring, large bytes go through shared memory, and what does not fit there goes in the frame."""

from __future__ import annotations

import asyncio
import io
import os
import socket

import pytest

from contextwarden.core import frames


def _rings(size: int) -> tuple[frames.Ring, frames.Ring]:
    """A ring's writer and reader side, as two processes map it (two maps of one memfd)."""
    w = frames.Ring.create(size)
    assert w is not None
    r = frames.Ring(os.dup(w.fd))
    os.close(w.fd)
    return w, r


@pytest.mark.parametrize("ring", [None, 1 << 20], ids=["socket", "ring"])
def test_frames_of_any_size_cross_whole_and_in_order(ring):
    w, r = _rings(ring) if ring else (None, None)

    async def main():
        a, b = socket.socketpair()
        frames.tune(a)
        frames.tune(b)
        _, wa = await frames.open_stream(a)
        rb, wb = await frames.open_stream(b)
        assert wb.transport.max_size == frames.BUFFER  # read in steps of the socket's buffer, not 256 KB
        sizes = [0, 1, 700_000, 5 << 20, 3]
        bodies = [os.urandom(n) for n in sizes]

        async def send():
            for i, body in enumerate(bodies):
                wa.writelines(frames.encode("request", i, {"raw_content": body, "headers": [(b"k", b"v")]}, w))
                await wa.drain()
            wa.close()

        sender = asyncio.ensure_future(send())
        got = []
        while (frame := await frames.read(rb, r)) is not None:
            got.append(frame)
        await sender
        wb.close()
        assert [(op, key) for op, key, _ in got] == [("request", i) for i in range(len(sizes))]
        assert [p["raw_content"] for _, _, p in got] == bodies

    asyncio.run(main())


def test_a_ring_carries_large_bytes_in_frame_order_and_frees_what_was_read():
    w, r = _rings(100_000)
    small, big = b"x" * 100, os.urandom(60_000)
    head, data = frames.encode("request", 1, {"a": small, "b": big}, w)
    assert len(data) < 1000  # the 60 KB went through the ring; the 100 bytes in the frame
    # a second one does not fit until the first was read: it goes in the frame
    _, data2 = frames.encode("request", 2, big, w)
    assert len(data2) > 60_000
    assert frames._Unpickler(io.BytesIO(data), r).load() == ("request", 1, {"a": small, "b": big})
    # read: the space is free again; the next piece wraps to the ring's start
    other = os.urandom(70_000)
    _, data3 = frames.encode("request", 3, other, w)
    assert len(data3) < 1000 and w.head == 100_000 + 70_000
    assert frames._Unpickler(io.BytesIO(data2), r).load()[2] == big  # (it never was in the ring)
    assert frames._Unpickler(io.BytesIO(data3), r).load()[2] == other
    _, data4 = frames.encode("request", 4, os.urandom(100_001), w)  # larger than the ring: in the frame
    assert len(data4) > 100_000 and w.head == 170_000
    # a body where a flow's state holds it (an observed flow's request: three containers down) goes
    # through the ring too; a frame of small bytes only is a plain pickle
    nested = {"flow": {"request": {"headers": ((b"k", b"v"),), "content": other}}}
    head5, data5 = frames.encode("observed", 5, nested, w)
    assert len(data5) < 1000 and frames._Unpickler(io.BytesIO(data5), r).load() == ("observed", 5, nested)
    head6, _ = frames.encode("chunk", 6, b"x" * 1000, w)
    assert not frames.HEADER.unpack(head6)[0] & frames._RINGED


def test_a_ring_read_to_its_end_gives_its_pages_back_and_carries_on():
    """``release`` (an idle engine's): once the reader took everything, the shared pages are freed
    (they counted in both processes' RSS); not while a frame is unread; frames after it cross as before."""
    w, r = _rings(1 << 20)

    def held() -> int:
        return os.fstat(r.fd).st_blocks * 512  # (the memfd's pages in use)

    body = os.urandom(900_000)
    at = w.put(body)
    assert at is not None and held() >= len(body)
    assert not w.release() and r.take(at) == body  # unread: kept
    assert w.release() and held() <= 8192
    again = os.urandom(300_000)
    at = w.put(again)
    assert at is not None and r.take(at) == again
