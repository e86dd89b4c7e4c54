"""A recording TCP relay: what a client really put on the wire, before the proxy saw it.

    relay = Relay(("127.0.0.1", proxy.port)).start()
    # point the client at relay.url instead of proxy.url
    relay.requests()  # the HTTP/1.1 requests the client sent: method, target, headers in order, body

Bytes are relayed both ways unchanged; only the client-to-proxy direction is recorded. Used for
plain-HTTP traffic (reverse mode); TLS traffic cannot be read here.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass


@dataclass
class WireRequest:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes  # de-chunked if the client used chunked transfer encoding

    @property
    def route(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


def parse_requests(stream: bytes) -> list[WireRequest]:
    """The HTTP/1.x requests in one connection's client-to-server bytes (a trailing partial one is left out)."""
    out: list[WireRequest] = []
    pos = 0
    while True:
        end = stream.find(b"\r\n\r\n", pos)
        if end < 0:
            return out
        head = stream[pos:end].decode("latin-1").split("\r\n")
        method, target, version = head[0].split(" ", 2)
        headers = []
        for line in head[1:]:
            k, _, v = line.partition(":")
            headers.append((k, v.strip()))
        pos = end + 4
        lower = {k.lower(): v for k, v in headers}
        if "chunked" in lower.get("transfer-encoding", "").lower():
            parts = []
            while True:
                eol = stream.find(b"\r\n", pos)
                if eol < 0:
                    return out
                size = int(stream[pos:eol].split(b";")[0], 16)
                pos = eol + 2
                if size == 0:
                    trailer_end = stream.find(b"\r\n", pos)
                    pos = trailer_end + 2  # no trailers expected
                    break
                parts.append(stream[pos:pos + size])
                pos += size + 2
            body = b"".join(parts)
        else:
            n = int(lower.get("content-length", "0") or 0)
            if len(stream) < pos + n:
                return out
            body = stream[pos:pos + n]
            pos += n
        out.append(WireRequest(method, target, version, headers, body))


class Relay:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._streams: list[bytearray] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Relay:
        threading.Thread(target=self._accept, name="relay", daemon=True).start()
        return self

    def stop(self) -> None:
        self._closed = True
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def requests(self) -> list[WireRequest]:
        with self._lock:
            streams = [bytes(s) for s in self._streams]
        return [r for s in streams for r in parse_requests(s)]

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            buf = bytearray()
            with self._lock:
                self._streams.append(buf)
            threading.Thread(target=self._connection, args=(client, upstream, buf), daemon=True).start()

    def _connection(self, client: socket.socket, upstream: socket.socket, buf: bytearray) -> None:
        back = threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True)
        back.start()
        self._pump(client, upstream, buf)
        back.join()
        client.close()
        upstream.close()

    def _pump(self, src: socket.socket, dst: socket.socket, record: bytearray | None) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if record is not None:
                    with self._lock:
                        record.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:  # pass the half-close on; the other direction keeps flowing
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
