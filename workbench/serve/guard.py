"""What stands between the network and the app: read deadlines, the Host allow-list, the access log.

- `guarded_h11(read_timeout)`: uvicorn's h11 protocol with a deadline on reading each request.
  uvicorn times out idle keep-alive connections only; a client that sends its headers or body a
  byte at a time (slowloris) would hold a connection, and its buffers, for as long as it likes.
  Here the head and body of a request must arrive within `read_timeout` seconds of its first
  byte (or of the connection opening), or the connection is closed.
- `Gate`: an ASGI middleware that answers 400 to a Host header outside the allow-list (DNS
  rebinding: a web page whose name resolves to 127.0.0.1 must not read our replies), and logs one
  line per request: method, path, status, duration, to the `picochat.serve` logger.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("picochat.serve")

LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def guarded_h11(read_timeout: float) -> type[H11Protocol]:
    class GuardedH11Protocol(H11Protocol):
        deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport):  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self.deadline is None and self.conn.their_state is h11.IDLE:
                self._arm()  # the first byte of the next request on a kept-alive connection
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE and self.conn.their_state is not h11.SEND_BODY:
                self._disarm()  # the request is in (or the connection is over)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self.deadline = self.loop.call_later(read_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def _too_slow(self) -> None:
            self.deadline = None
            if not self.transport.is_closing():
                log.warning("closed a connection from %s: its request took over %g s to arrive",
                            _client_text(self.client), read_timeout)
                self.transport.close()

    return GuardedH11Protocol


def _client_text(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"


def host_name(header: str) -> str:
    """The name part of a Host header, lower-cased: 'LocalHost:8000' -> 'localhost',
    '[::1]:8000' -> '[::1]'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def allowed_hosts(bound_host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The Host names served: this machine's names, the bound address, and `extra` ('*': any)."""
    names = {*LOCAL_HOSTS, *(host.strip().lower() for host in extra if host.strip())}
    bound = bound_host.strip().lower()
    if bound not in ("", "0.0.0.0", "::"):
        names.add(f"[{bound}]" if ":" in bound and not bound.startswith("[") else bound)
    return frozenset(names)


class Gate:
    def __init__(self, app, hosts: frozenset[str] | None):
        self.app, self.hosts = app, hosts  # None: any Host
        self.state = getattr(app, "state", None)  # the app's (scheduler, model) for tests and tools

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [0]

        async def send_logged(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self.hosts is not None and "*" not in self.hosts:
                host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
                if host_name(host) not in self.hosts:
                    return await _refuse_host(host, send_logged)
            await self.app(scope, receive, send_logged)
        finally:
            log.info("%s %s %s %.1f ms", scope["method"], scope["path"], status[0] or "-",
                     (time.perf_counter() - start) * 1000)


async def _refuse_host(host: str, send) -> None:
    message = (f"the Host header {host[:100]!r} is not served here; start the server with --allowed-host "
               "NAME to allow it")
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": "invalid_host"}}).encode()
    await send({"type": "http.response.start", "status": 400,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
