"""The frames between mitmdump's process and the engine (contextwarden/core/frames.py): whole frames of
any size come through in order, the end of the stream reads as None, and a frame is read in large steps
(asyncio's transport reads 256 KB a turn of the loop by default: a 600 KB request took three turns)."""

from __future__ import annotations

import asyncio
import os
import socket

from contextwarden.core import frames


def test_frames_of_any_size_cross_whole_and_in_order():
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
                wa.writelines(frames.encode("request", i, {"raw_content": body, "headers": [(b"k", b"v")]}))
                await wa.drain()
            wa.close()

        sender = asyncio.ensure_future(send())
        got = []
        while (frame := await frames.read(rb)) is not None:
            got.append(frame)
        await sender
        wb.close()
        assert [(op, key) for op, key, _ in got] == [("request", i) for i in range(len(sizes))]
        assert [p["raw_content"] for _, _, p in got] == bodies

    asyncio.run(main())
