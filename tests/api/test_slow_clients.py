"""Slow peers cannot hold the service: an upload that stalls or crawls is answered 408 and
its staged file removed, and a URL input that drips its bytes fails at the fetch deadline.

The server here has small limits (a second of grace, 64 KiB/s, 3 s in all) so each case
ends in seconds; every socket read in the tests is bounded by a timeout."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import ServerFactory
from tests.api.server import ApiServer, poll_until

UPLOAD_DEADLINE_S = 3.0
UPLOAD_MIN_BYTES_PER_S = 64 * 1024
UPLOAD_GRACE_S = 1.0
FETCH_DEADLINE_S = 3.0
KEEP_ALIVE_S = 1
# The answer must come within the server's own limit plus this much (start-up of the
# request, a slow CI machine); far below what an unbounded wait would take.
SLACK_S = 4.0
BOUNDARY = "slowclientboundary"
BAD_PARAM = 10002


@pytest.fixture(scope="module")
def slow_server(server_factory: ServerFactory, api_media: Path) -> ApiServer:
    return server_factory(
        upload_deadline_s=UPLOAD_DEADLINE_S,
        upload_min_bytes_per_s=UPLOAD_MIN_BYTES_PER_S,
        upload_rate_grace_s=UPLOAD_GRACE_S,
        keep_alive_s=KEEP_ALIVE_S,
        url_fetch_allowed_schemes=["http"],
        url_fetch_allowed_hosts=["127.0.0.1"],
        url_fetch_timeout_s=FETCH_DEADLINE_S,
        local_input_dir=api_media,
    )


def _staging(server: ApiServer) -> list[Path]:
    return list((server.data_dir / "service" / "staging").iterdir())


def _start_upload(server: ApiServer, body_size: int) -> socket.socket:
    """Sends the request head and the file part's head of a multipart POST /v1/jobs that
    declares `body_size` bytes of audio; the caller sends (or withholds) the rest."""
    part_head = (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="audio"; filename="speech.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    head = (
        "POST /v1/jobs HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(part_head) + body_size + len(tail)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.settimeout(UPLOAD_DEADLINE_S + SLACK_S)
    sock.sendall(head + part_head)
    return sock


def _read_answer(sock: socket.socket) -> tuple[int, bytes]:
    """(status, everything read until the server closed the connection)."""
    received = b""
    while chunk := sock.recv(65536):  # bounded by the socket's timeout
        received += chunk
    status_line = received.split(b"\r\n", 1)[0]
    return int(status_line.split()[1]), received


def test_an_upload_that_stops_sending_is_answered_408_and_its_file_removed(
    slow_server: ApiServer, speech: Path
) -> None:
    audio = speech.read_bytes()
    started = time.monotonic()
    with _start_upload(slow_server, len(audio)) as sock:
        sock.sendall(audio[:1000])  # then nothing more
        status, answer = _read_answer(sock)
    took = time.monotonic() - started

    assert status == 408, answer
    assert b"DH_UPLOAD_MIN_BYTES_PER_S" in answer
    # Cut off by the rate rule (a second of grace), answered and closed well before the
    # total deadline plus keep-alive.
    assert took < UPLOAD_DEADLINE_S + KEEP_ALIVE_S + SLACK_S, took
    poll_until(lambda: _staging(slow_server), lambda left: left == [], 5.0, "staging empty")


def test_an_upload_that_keeps_crawling_past_the_deadline_is_answered_408(
    slow_server: ApiServer, long_speech: Path
) -> None:
    audio = long_speech.read_bytes()
    chunk, pause_s = 64 * 1024, 0.25  # 256 KiB/s: above the minimum rate, never done in 3 s
    assert len(audio) > chunk * (UPLOAD_DEADLINE_S + SLACK_S) / pause_s
    started = time.monotonic()
    with _start_upload(slow_server, len(audio)) as sock:
        sent = 0
        try:
            # Sends at the client's pace until the server answers (or the test's bound).
            while time.monotonic() - started < UPLOAD_DEADLINE_S + SLACK_S:
                sock.sendall(audio[sent : sent + chunk])
                sent += chunk
                answered, _, _ = select.select([sock], [], [], pause_s)
                if answered:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while this client was still sending
        took = time.monotonic() - started
        status, answer = _read_answer(sock)

    assert status == 408, answer
    assert UPLOAD_DEADLINE_S <= took < UPLOAD_DEADLINE_S + SLACK_S, took
    assert b"DH_UPLOAD_DEADLINE_S" in answer
    poll_until(lambda: _staging(slow_server), lambda left: left == [], 5.0, "staging empty")


@contextmanager
def _drip_server(total_bytes: int) -> Iterator[str]:
    """A server on 127.0.0.1 whose answer declares `total_bytes` and sends one a second."""
    stop = threading.Event()

    class Drip(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", str(total_bytes))
            self.end_headers()
            try:
                for _ in range(total_bytes):  # bounded: total_bytes seconds at most
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    if stop.wait(1.0):  # the drip's pace; set when the test ends
                        return
            except (BrokenPipeError, ConnectionResetError):
                return  # the fetcher gave up, as it should

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_url_input_that_drips_fails_at_the_total_fetch_deadline(
    slow_server: ApiServer, avatar_video: Path
) -> None:
    with _drip_server(total_bytes=20) as base, slow_server.client() as client:
        started = time.monotonic()
        reply = client.post(
            "/easy/submit",
            json={"audio_url": f"{base}/speech.wav", "video_url": avatar_video.name, "code": "d"},
        )
        took = time.monotonic() - started

    body = reply.json()
    assert body["code"] == BAD_PARAM, body
    assert "audio_url" in body["msg"] and "deadline of 3 s" in body["msg"], body
    assert FETCH_DEADLINE_S <= took < FETCH_DEADLINE_S + SLACK_S, took
    poll_until(lambda: _staging(slow_server), lambda left: left == [], 5.0, "staging empty")


def test_an_idle_connection_is_closed_after_the_keep_alive(slow_server: ApiServer) -> None:
    # Well under uvicorn's own default of 5 s: the setting is what closed it.
    bound_s = KEEP_ALIVE_S + 2.0
    request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{slow_server.port}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", slow_server.port), timeout=10) as sock:
        sock.settimeout(bound_s)
        sock.sendall(request.encode())
        started = time.monotonic()
        status, _ = _read_answer(sock)  # returns once the server closes the connection
        took = time.monotonic() - started

    assert status == 200
    assert took < bound_s, took
