"""A deadline for a request's headers, kept by the Serve proxy itself.

Serve's proxy is uvicorn, and uvicorn bounds no part of receiving a request: its keep-alive timer
runs only between requests and any byte cancels it, so a client that sends part of a header
block (`POST /v1/rag HTTP/1.1\\r\\nHost: x\\r\\n`) and stops, or connects and sends nothing,
holds its connection, a file descriptor and the proxy's memory forever (issue 22: 300 such were
all open after 150 s). No middleware can help: the app sees a request only once its headers are
complete (from then on `limits.body_timeout_s` bounds the body). Serve offers no setting for it,
so each worker process of a local Ray (`pipeline.ray_runtime`) installs this protocol as
uvicorn's "auto" HTTP protocol, the one Serve's proxy asks for: the HTTP protocol uvicorn would
have chosen (httptools, or h11), with a timer armed when a connection opens and at the first
byte of each later request on it, disarmed when that request's headers are complete. When it
fires, the client gets a 408 in the API's error shape and the connection is closed.
"""

from __future__ import annotations

import asyncio
import json
import os

from uvicorn import config as uvicorn_config
from uvicorn.protocols.http.auto import AutoHTTPProtocol

ENV = "LOOKAHEAD_RAG_HEADER_TIMEOUT_S"  # how `lookahead-rag serve` hands the setting to workers


def install(timeout_s: float) -> None:
    """Make `HeaderDeadlineProtocol`, with `timeout_s`, what uvicorn's `http="auto"` means in
    this process (Serve's proxy builds its server after this runs)."""
    HeaderDeadlineProtocol.timeout_s = timeout_s
    uvicorn_config.HTTP_PROTOCOLS["auto"] = f"{__name__}:{HeaderDeadlineProtocol.__name__}"


def install_from_env() -> None:
    """`install` with the deadline in `ENV`, when it is set."""
    if value := os.environ.get(ENV):
        install(float(value))


def timeout_response(timeout_s: float) -> bytes:
    """The whole 408 sent to a client whose headers did not arrive within `timeout_s`."""
    message = f"the request headers did not arrive within {timeout_s:g} s"
    error = {"message": message, "type": "invalid_request_error", "param": None}
    body = json.dumps({"error": {**error, "code": "request_timeout"}})  # the API's error shape
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return (head + body).encode()


class HeaderDeadlineProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's own HTTP protocol with a deadline on each request's headers. Both of uvicorn's
    protocols make a new `cycle` when a request's headers are complete, which is how the end of
    the headers is seen here without parsing anything twice."""

    timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._next_request = False  # the last request's response is complete
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._next_request:  # a new request begins on a kept-alive connection
            self._next_request = False
            self._arm()
        super().data_received(data)
        if self._header_timer is not None and self.cycle is not self._awaited_cycle:
            self._disarm()  # its headers are complete

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._next_request = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._awaited_cycle = self.cycle
        self._header_timer = self.loop.call_later(self.timeout_s, self._expired)

    def _disarm(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.write(timeout_response(self.timeout_s))
            self.transport.close()
