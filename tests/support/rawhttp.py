"""A byte-exact HTTP/1.1 client for tests: sends exactly the head and body given (header order, case
and duplicates included), directly or through an HTTPS proxy's CONNECT tunnel, and returns exactly
what came back, with the time each piece of the body arrived."""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes  # as received, de-chunked but still content-encoded
    complete: bool  # False when the connection ended before the body did
    arrivals: list[tuple[float, bytes]] = field(default_factory=list)  # (time.time(), chunk) as they arrived

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    @property
    def upstream_headers(self) -> list[tuple[str, str]]:
        """The headers as the upstream sent them: without the proxy's own overhead header (the last one)."""
        return [(k, v) for k, v in self.headers if k.lower() != "x-contextwarden-overhead-ms"]


def build_request(method: str, target: str, headers: list[tuple[str, str]], body: bytes = b"",
                  content_length: bool = True) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers]
    if content_length and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Reader:
    def __init__(self, sock) -> None:
        self.sock = sock
        self.buf = b""
        self.arrivals: list[tuple[float, bytes]] = []

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if data:
            self.arrivals.append((time.time(), data))
        self.buf += data
        return bool(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError("connection closed in the middle of a line")
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError("connection closed early")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def rest(self) -> bytes:
        while self._fill():
            pass
        out, self.buf = self.buf, b""
        return out


def _read_response(r: _Reader, head_only: bool = False) -> RawResponse:
    status_line = r.line().decode("latin-1")
    _, status, *reason = status_line.split(" ", 2)
    headers = []
    while True:
        line = r.line()
        if not line:
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers.append((k, v.strip()))
    lower = {k.lower(): v for k, v in headers}
    body, complete = b"", True
    r.arrivals.clear()
    if r.buf:
        r.arrivals.append((time.time(), r.buf))
    try:
        if head_only or int(status) in (204, 304):
            pass
        elif "chunked" in lower.get("transfer-encoding", "").lower():
            parts = []
            while True:
                size = int(r.line().split(b";")[0], 16)
                if size == 0:
                    r.line()
                    break
                parts.append(r.exactly(size))
                r.line()
            body = b"".join(parts)
        elif "content-length" in lower:
            body = r.exactly(int(lower["content-length"]))
        else:
            body = r.rest()
    except (ConnectionError, OSError, ValueError):
        complete = False
        body = b"".join(parts) if "parts" in locals() else r.buf
    return RawResponse(int(status), reason[0] if reason else "", headers, body, complete, list(r.arrivals))


def connect(proxy_port: int, tunnel_to: str | None = None, ca_pem: str | None = None, timeout: float = 60) -> socket.socket:
    """A socket to the proxy; with ``tunnel_to`` ("host:443"), a TLS connection through its CONNECT tunnel."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
    if tunnel_to is None:
        return sock
    sock.sendall(f"CONNECT {tunnel_to} HTTP/1.1\r\nHost: {tunnel_to}\r\n\r\n".encode())
    resp = _read_response(_Reader(sock), head_only=True)
    if resp.status != 200:
        raise ConnectionError(f"CONNECT {tunnel_to} answered {resp.status}")
    ctx = ssl.create_default_context(cafile=ca_pem)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx.wrap_socket(sock, server_hostname=tunnel_to.rsplit(":", 1)[0])


def exchange(sock: socket.socket, request: bytes, head_only: bool = False) -> RawResponse:
    """Send one request on ``sock`` and read its response."""
    sock.sendall(request)
    return _read_response(_Reader(sock), head_only=head_only)
