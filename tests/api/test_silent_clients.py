"""Connections that ask for nothing cannot take the service down: a connection that sends
no complete request head within DH_HEADER_TIMEOUT_S is closed, 300 of them leave a normal
request and /healthz answered, and a request head over 16 KiB is answered 431.

Every socket read is bounded by a timeout; the connections are opened to 127.0.0.1 only
and closed by the test."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest

from orchestrator.cli import MAX_HEADER_BYTES
from tests.api.conftest import API_KEY, ServerFactory
from tests.api.server import ApiServer

HEADER_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 256
SILENT_CONNECTIONS = 300
# An answer must come within this; far below how long the silent connections stay.
ANSWER_S = 2.0
# The server's own deadline plus this much before a socket read gives up.
SLACK_S = 3.0


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> ApiServer:
    return server_factory(header_timeout_s=HEADER_TIMEOUT_S, max_connections=MAX_CONNECTIONS)


def _connect(server: ApiServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.settimeout(HEADER_TIMEOUT_S + SLACK_S)
    return sock


def _closed_after(sock: socket.socket) -> float:
    """Seconds until the server closes `sock` (reads until EOF, bounded by its timeout)."""
    start = time.monotonic()
    while sock.recv(65536):
        pass
    return time.monotonic() - start


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.fixture
def silent_connections(server: ApiServer) -> Iterator[list[socket.socket]]:
    with ExitStack() as stack:
        yield [stack.enter_context(_connect(server)) for _ in range(SILENT_CONNECTIONS)]


def test_a_connection_that_sends_nothing_is_closed_at_the_head_deadline(
    server: ApiServer,
) -> None:
    with _connect(server) as sock:
        waited = _closed_after(sock)
    assert HEADER_TIMEOUT_S - 0.5 <= waited <= HEADER_TIMEOUT_S + SLACK_S


def test_a_head_dripped_byte_by_byte_is_cut_off_at_the_deadline(server: ApiServer) -> None:
    head = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nX-Slow: ".encode()
    drip = head + b"a" * 1000
    closed_after: float | None = None
    with _connect(server) as sock:
        start = time.monotonic()
        for byte in drip:
            if time.monotonic() - start > HEADER_TIMEOUT_S + SLACK_S:
                break
            try:
                sock.send(bytes([byte]))
            except OSError:  # the server has closed it
                closed_after = time.monotonic() - start
                break
            # One byte per 0.2 s, and the pause doubles as the watch for the close.
            readable, _, _ = select.select([sock], [], [], 0.2)
            if readable and sock.recv(1) == b"":
                closed_after = time.monotonic() - start
                break
    assert closed_after is not None, "a dripped head kept its connection open"
    assert closed_after <= HEADER_TIMEOUT_S + SLACK_S


def test_silent_connections_do_not_stop_requests_or_health_probes(
    server: ApiServer, silent_connections: list[socket.socket]
) -> None:
    assert len(silent_connections) > MAX_CONNECTIONS
    with httpx.Client(base_url=server.base_url, timeout=ANSWER_S) as client:
        for path in ("/healthz", "/readyz", "/v1/system"):
            start = time.monotonic()
            reply = client.get(path, headers={"Authorization": "Bearer test-key"})
            assert reply.status_code != 503, (path, reply.text)
            assert time.monotonic() - start < ANSWER_S
    # And they do go away by themselves.
    assert _closed_after(silent_connections[0]) <= HEADER_TIMEOUT_S + SLACK_S


def test_a_request_head_over_16_kib_is_answered_431(server: ApiServer) -> None:
    padding = "a" * (MAX_HEADER_BYTES + 1024)
    head = f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: {padding}\r\n\r\n".encode()
    with _connect(server) as sock:
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert _status(answer) == 431
    assert b"request head is over" in answer


def test_a_100_kb_head_sent_at_once_is_refused_too(server: ApiServer) -> None:
    padding = "b" * 100_000
    head = f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: {padding}\r\n\r\n".encode()
    with _connect(server) as sock:
        try:
            sock.sendall(head)
        except OSError:  # closed while the rest was still being sent: also a refusal
            return
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            return
    assert _status(answer) == 431


def test_a_head_just_under_the_bound_is_answered(server: ApiServer) -> None:
    padding = "c" * (MAX_HEADER_BYTES - 200)
    with httpx.Client(base_url=server.base_url, timeout=ANSWER_S) as client:
        reply = client.get("/healthz", headers={"X-Padding": padding})
    assert reply.status_code == 200


def test_a_kept_alive_connection_still_answers_its_next_request(server: ApiServer) -> None:
    with httpx.Client(base_url=server.base_url, timeout=ANSWER_S) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/healthz").status_code == 200


def test_a_body_left_unread_by_a_refusal_is_not_taken_for_the_next_head(
    server: ApiServer,
) -> None:
    # An upload that is not a multipart form is refused before its body is read (as a full
    # disk refuses one); the rest of the body, bigger than the head bound, arrives after
    # that answer, then the next request on the same connection.
    body = b"d" * (4 * MAX_HEADER_BYTES)
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Length: {len(body)}\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode()
    with _connect(server) as sock:
        sock.sendall(head + body[:1024])
        first = _read_answer(sock)
        sock.sendall(body[1024:])
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        second = _read_answer(sock)
    assert _status(first) == 422, first
    assert _status(second) == 200, second


def test_a_refused_body_that_stops_arriving_is_closed_at_the_head_deadline(
    server: ApiServer,
) -> None:
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Content-Length: 100000\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode()
    with _connect(server) as sock:
        sock.sendall(head + b"e" * 1024)
        assert _status(_read_answer(sock)) == 422
        waited = _closed_after(sock)
    assert waited <= HEADER_TIMEOUT_S + SLACK_S


def _read_answer(sock: socket.socket) -> bytes:
    """One answer with a Content-Length, read from a kept-alive socket."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        assert chunk, answer
        answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, answer
        rest += chunk
    return head + b"\r\n\r\n" + rest


def test_a_refusal_reaches_a_client_that_is_still_sending_its_body(server: ApiServer) -> None:
    # A body over the small-route bound is refused 413 before a byte of it is read, and
    # the connection closed. The client has already sent a part of it that the server
    # never reads: a plain close would answer with a reset, and the client's read would
    # fail instead of finding the 413 (what a 408 to a crawling upload met in CI).
    sent = 512 * 1024
    head = (
        f"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Length: {4 * sent}\r\nContent-Type: application/json\r\n\r\n"
    ).encode()
    for _ in range(5):  # a reset is a race with the client's read: five chances to lose it
        with _connect(server) as sock:
            sock.sendall(head + b" " * sent)
            readable, _, _ = select.select([sock], [], [], ANSWER_S + SLACK_S)
            assert readable, "no answer"
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert _status(answer) == 413, answer
