"""Hostile requests: lying lengths, bodies that never end or never come, deep JSON, odd
ids. Each is answered at once with a 4xx (HeyGem's 200 + code 10002 under /easy), never a
hang and never a 500."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from orchestrator.api.limits_middleware import SMALL_BODY_BYTES
from tests.api.conftest import API_KEY, ServerFactory
from tests.api.server import ApiServer

BODY_TIMEOUT_S = 1.0
# "At once": well under a second on a loaded 2-core machine.
PROMPT_S = 1.0
HEYGEM_BAD_PARAM = 10002
HUGE = 10**12  # a terabyte, declared and never sent
SOCKET_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> ApiServer:
    return server_factory(
        api_key=API_KEY,
        request_body_timeout_s=BODY_TIMEOUT_S,
        max_upload_bytes=256 * 1024,
    )


def _raw_request(
    server: ApiServer, head: str, body: bytes = b""
) -> tuple[int, dict[str, Any], float]:
    """Sends `head` (request line and headers) and `body` as they are, and reads the answer
    until the server closes; returns its status, JSON body and seconds taken."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=SOCKET_TIMEOUT_S) as conn:
        conn.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        answer = bytearray()
        while chunk := conn.recv(65536):
            answer += chunk
    elapsed = time.monotonic() - started
    status_line, _, rest = bytes(answer).partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(payload), elapsed


def _head(server: ApiServer, method: str, path: str, *headers: str) -> str:
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        f"Authorization: Bearer {API_KEY}",
        *headers,
    ]
    return "\n".join(lines) + "\n"


def test_a_huge_declared_length_on_easy_submit_is_refused_at_once(server: ApiServer) -> None:
    head = _head(
        server,
        "POST",
        "/easy/submit",
        "Content-Type: application/json",
        f"Content-Length: {HUGE}",
    )

    status, body, elapsed = _raw_request(server, head, b'{"audio_url": ')

    assert status == 200  # HeyGem's client throws on anything else
    assert body["code"] == HEYGEM_BAD_PARAM and body["success"] is False
    assert str(SMALL_BODY_BYTES) in body["msg"]
    assert elapsed < PROMPT_S


def test_a_huge_declared_length_on_an_upload_is_refused_at_once(server: ApiServer) -> None:
    head = _head(
        server,
        "POST",
        "/v1/jobs",
        "Content-Type: multipart/form-data; boundary=x",
        f"Content-Length: {HUGE}",
    )

    status, body, elapsed = _raw_request(server, head, b"--x\r\n")

    assert status == 413
    assert "DH_MAX_UPLOAD_BYTES" in body["error"]["message"]
    assert elapsed < PROMPT_S


def _endless_json() -> Iterator[bytes]:
    # No Content-Length (chunked): only counting the bytes as they come can stop it.
    yield b'{"audio_url": "'
    for _ in range(2 * SMALL_BODY_BYTES // 1024):
        yield b"a" * 1024


def test_a_chunked_json_body_over_the_bound_is_refused(server: ApiServer) -> None:
    with server.client() as client:
        easy = client.post(
            "/easy/submit", content=_endless_json(), headers={"Content-Type": "application/json"}
        )
        v1 = client.request("DELETE", "/v1/jobs/some-job", content=_endless_json())

    assert easy.status_code == 200
    assert easy.json()["code"] == HEYGEM_BAD_PARAM
    assert v1.status_code == 413
    assert v1.headers["connection"] == "close"
    assert str(SMALL_BODY_BYTES) in v1.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "status", "read"),
    [
        ("/easy/submit", 200, lambda body: body["code"] == HEYGEM_BAD_PARAM and body["msg"]),
        ("/v1/jobs/some-job", 408, lambda body: body["error"]["stage"] == "request"),
    ],
)
def test_a_body_that_never_arrives_is_refused_after_the_deadline(
    server: ApiServer, path: str, status: int, read: object
) -> None:
    method = "POST" if path.startswith("/easy") else "DELETE"
    head = _head(server, method, path, "Content-Type: application/json", "Content-Length: 100")

    answered, body, elapsed = _raw_request(server, head, b'{"audio_url"')

    assert answered == status
    assert callable(read) and read(body)
    assert "DH_REQUEST_BODY_TIMEOUT_S" in json.dumps(body)
    assert BODY_TIMEOUT_S <= elapsed < BODY_TIMEOUT_S + 5.0


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/jobs", 422),  # not a multipart form
        ("POST", "/v1/avatars", 422),
        ("GET", "/v1/jobs", 200),  # a body it does not read
        ("DELETE", "/v1/jobs/some-job", 404),
        ("DELETE", "/v1/avatars/some-avatar", 404),
    ],
)
def test_deeply_nested_json_on_v1_routes_is_never_parsed_into_a_crash(
    server: ApiServer, method: str, path: str, status: int
) -> None:
    depth = SMALL_BODY_BYTES // 2 - 16  # as deep as fits under the bound
    nested = b"[" * depth + b"]" * depth
    with server.client() as client:
        reply = client.request(
            method, path, content=nested, headers={"Content-Type": "application/json"}
        )

    assert reply.status_code == status, reply.text
    if status >= 400:
        assert reply.json()["error"]["message"]


def _cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(str(seq).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "query",
    [
        {"cursor": _cursor(10**30)},  # past SQLite's 64-bit integers
        {"cursor": _cursor(-1)},
        {"cursor": "%%%"},
        {"cursor": "A" * 1000},
        {"state": "exploded"},
        {"limit": "0"},
        {"limit": str(10**40)},
    ],
)
def test_bad_list_parameters_are_422(server: ApiServer, query: dict[str, str]) -> None:
    with server.client() as client:
        reply = client.get("/v1/jobs", params=query)

    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["message"]


@pytest.mark.parametrize("job_id", ["%00", "..%2F..%2Fetc%2Fpasswd", "%ff%fe", "x" * 4000])
def test_odd_ids_are_not_found(server: ApiServer, job_id: str) -> None:
    with server.client() as client:
        replies = [
            client.get(f"/v1/jobs/{job_id}"),
            client.get(f"/v1/jobs/{job_id}/result"),
            client.delete(f"/v1/jobs/{job_id}"),
            client.get(f"/v1/avatars/{job_id}"),
            client.delete(f"/v1/avatars/{job_id}"),
        ]

    for reply in replies:
        assert reply.status_code == 404, (reply.request.url, reply.text)
        assert reply.json()["error"]["message"]


def test_a_request_with_an_unparseable_length_never_reaches_a_route(server: ApiServer) -> None:
    head = _head(server, "POST", "/easy/submit", "Content-Length: 12abc")
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=SOCKET_TIMEOUT_S) as conn,
    ):
        conn.sendall(head.replace("\n", "\r\n").encode() + b"\r\n{}")
        answer = conn.recv(65536)

    assert answer.startswith(b"HTTP/1.1 400")


def test_the_server_stays_up(server: ApiServer) -> None:
    """After all of the above the process still answers and never logged a 500."""
    assert httpx.get(f"{server.base_url}/healthz").status_code == 200
    assert "unhandled error" not in server.log(lines=10_000)
