"""What a connection may cost before it has asked for anything.

uvicorn closes a keep-alive connection that stays quiet after an answer, but a connection
that never completes a request head is never closed, and its `limit_concurrency` counts
such connections: a few hundred silent sockets answered every request 503, `/healthz`
included. Two rules replace it:

- `bounded_protocol`: uvicorn's h11 protocol with a deadline for the request head
  (from the connection's start, and again after each answer on a kept-alive connection)
  and a bound on the head's size, answered `431` as RFC 6585 says, instead of h11's
  buffer rule, which only looks at a head that arrived incomplete. The rest of a body
  left unread by an early answer (a refusal) is read as that body, not as the next head;
  the connection is closed if it falls silent for the head deadline meanwhile.
  A connection the server closes while its client is still sending (a request body not
  read to its end, a head refused as too large) is closed lingering: the answer and a
  FIN go first, and what the client still sends is read and dropped (for LINGER_S and
  LINGER_BYTES at most). Closing a socket with unread bytes makes the kernel send a
  reset, which can destroy the answer before the client reads it: a 408 or 413 to a
  client still sending its body. The bounds keep a refused upload refused: a client that
  sends on regardless meets the reset soon after. An idle connection closes at once (a
  lingering one would hold a server's shutdown, which waits for its connections).
- `InFlightLimit`: the concurrency bound counts requests being answered, not connections,
  so silent connections cost a file descriptor each until their deadline, and nothing more.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import h11
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

# The end of a request head (RFC 9112 section 2.1).
_HEAD_END = b"\r\n\r\n"
_TOO_LARGE = 431  # Request Header Fields Too Large (RFC 6585 section 5)
# How long and how much a closed connection still reads of what its client sends
# (nginx's lingering_time is 30 s; a client that stops sending or closes ends it at
# once). The bytes cover what a client had sent before the answer, which sits unread in
# the kernel's buffers (a few MiB on loopback), and a little more.
LINGER_S = 2.0
LINGER_BYTES = 16 * 1024 * 1024


class _LingeringTransport:
    """The h11 protocol's transport, whose `close()` is a lingering close (module doc)
    while `peer_sending()` says so; everything else is the transport's own. A connection
    upgraded to a WebSocket gets the transport itself, since its protocol closes by its own
    handshake."""

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        peer_sending: Callable[[], bool],
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._peer_sending = peer_sending
        self.lingering = False
        self._dropped = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    @property
    def inner(self) -> asyncio.Transport:
        return self._transport

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        if self.is_closing():
            return
        if not self._peer_sending() or not self._transport.can_write_eof():
            self._transport.close()
            return
        self.lingering = True
        # The FIN follows what is buffered; the client reads the answer, then the end.
        self._transport.write_eof()
        # Reading goes on (uvicorn pauses it while a body is not consumed), so a client
        # blocked on sending moves on to read its answer. Its own FIN closes at once
        # (the protocol's eof_received asks for that); silence or more bytes, LINGER_S.
        self._transport.resume_reading()
        self._loop.call_later(LINGER_S, self._transport.close)

    def drop(self, data: bytes) -> None:
        """`data` arrived while lingering: dropped, and the end once there is too much."""
        self._dropped += len(data)
        if self._dropped > LINGER_BYTES:
            self._transport.close()


def bounded_protocol(head_timeout_s: float, max_head_bytes: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request head is not complete
    within `head_timeout_s` and answering 431 to a head over `max_head_bytes`."""

    class BoundedH11Protocol(_BoundedHead):
        HEAD_TIMEOUT_S = head_timeout_s
        MAX_HEAD_BYTES = max_head_bytes

    return BoundedH11Protocol


class _BoundedHead(H11Protocol):
    HEAD_TIMEOUT_S = 10.0
    MAX_HEAD_BYTES = 16 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head = bytearray()  # what arrived of the awaited head (at most the bound)
        self._awaiting_head = False
        # An answer went out before its request's body was read (a refusal): the rest of
        # that body is still to come, and is not the next head.
        self._draining_body = False
        self._head_refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        lingering = _LingeringTransport(transport, asyncio.get_running_loop(), self._peer_sending)
        super().connection_made(lingering)  # type: ignore[arg-type]
        self._await_head()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        if isinstance(self.transport, _LingeringTransport):
            self.transport = self.transport.inner
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if isinstance(self.transport, _LingeringTransport) and self.transport.lingering:
            self.transport.drop(data)
            return
        if self._awaiting_head:
            if self._head_too_large(data):
                self._answer_too_large()
                return
            cycle = self.cycle
            super().data_received(data)
            # A request head was read (its answer is under way), or the connection became
            # a WebSocket, which has its own protocol and keep-alive from now on.
            if self.cycle is not cycle or self.transport.get_protocol() is not self:
                self._head_arrived()
            return
        cycle = self.cycle
        super().data_received(data)
        if self._draining_body and not self.transport.is_closing():
            if self.cycle is not cycle:  # the body ended and the next request began
                self._draining_body = False
                self._stop_head_timer()
            elif self._between_requests():
                self._draining_body = False
                self._await_head()
            else:  # still draining: closed only if the client falls silent
                self._restart_head_timer()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()
        if self.cycle is not cycle or self.transport.is_closing():
            return
        if self._between_requests():
            # Kept alive and no pipelined request started: the next head has a deadline.
            self._await_head()
        else:
            self._draining_body = True
            self._restart_head_timer()

    def _peer_sending(self) -> bool:
        """Whether the client may still be sending what the server will not read."""
        return self._head_refused or self.conn.their_state is h11.SEND_BODY

    def _between_requests(self) -> bool:
        return self.conn.our_state is h11.IDLE and self.conn.their_state is h11.IDLE

    def _restart_head_timer(self) -> None:
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.HEAD_TIMEOUT_S, self._head_timed_out)

    def _await_head(self) -> None:
        self._head.clear()
        self._awaiting_head = True
        self._restart_head_timer()

    def _head_arrived(self) -> None:
        self._stop_head_timer()
        self._head.clear()
        self._awaiting_head = False

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_large(self, data: bytes) -> bool:
        """Whether the head now exceeds the bound; the bytes kept are bounded too."""
        room = self.MAX_HEAD_BYTES + len(_HEAD_END) - len(self._head)
        self._head += data[: max(room, 0)]
        end = self._head.find(_HEAD_END)
        if end >= 0:
            return end + len(_HEAD_END) > self.MAX_HEAD_BYTES
        return len(self._head) > self.MAX_HEAD_BYTES

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if (self._awaiting_head or self._draining_body) and not self.transport.is_closing():
            # Nothing was asked, so nothing is answered: the connection is closed.
            self.transport.close()

    def _answer_too_large(self) -> None:
        self._stop_head_timer()
        self._awaiting_head = False
        self._head_refused = True
        body = json.dumps(
            {
                "error": {
                    "stage": "request",
                    "message": f"the request head is over {self.MAX_HEAD_BYTES} bytes "
                    "(request line and headers)",
                    "retryable": False,
                }
            }
        ).encode()
        # Written by hand: h11 may not have parsed anything of the head yet, so its state
        # machine cannot send a response now.
        head = (
            f"HTTP/1.1 {_TOO_LARGE} Request Header Fields Too Large\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        ).encode()
        self.transport.write(head + body)
        self.transport.close()
        self.conn = h11.Connection(h11.SERVER)  # discards what was buffered of the head


class InFlightLimit:
    """Answers 503 (with Retry-After) to a request that arrives while `limit` requests are
    being answered; probes of health are always answered."""

    RETRY_AFTER_S = 1
    ALWAYS = frozenset({"/healthz", "/readyz"})

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.ALWAYS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            await _busy(send, self.limit, self.RETRY_AFTER_S)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


async def _busy(send: Send, limit: int, retry_after_s: int) -> None:
    body = json.dumps(
        {
            "error": {
                "stage": "server",
                "message": f"the server is answering {limit} requests already; try again",
                "retryable": True,
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(retry_after_s).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
