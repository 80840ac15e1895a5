"""Outbound requests through a real server: a malformed URL is bad input, never a 500, and
a webhook refused on the address it resolves to records why without saying anything about
what answers there (no status code, no connection error)."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import httpx
import pytest

from orchestrator.outbound import refusal
from tests.api.receivers import webhook_sink
from tests.api.server import poll_until, submit_job

BAD_PARAM = 10002


@pytest.mark.parametrize("url", ["http://[::1", "http://[::1/hook", "http://h:99999/"])
def test_a_malformed_webhook_url_is_refused_at_submission_naming_the_field(
    client: httpx.Client, avatar_id: str, tiny_speech: Path, url: str
) -> None:
    reply = submit_job(client, tiny_speech, avatar_id=avatar_id, webhook_url=url)
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert error["stage"] == "webhook" and "webhook_url" in error["message"]


def test_a_webhook_to_the_metadata_address_is_refused_at_submission(
    client: httpx.Client, avatar_id: str, tiny_speech: Path
) -> None:
    reply = submit_job(
        client, tiny_speech, avatar_id=avatar_id, webhook_url="http://169.254.169.254/latest"
    )
    assert reply.status_code == 422, reply.text
    assert "metadata" in reply.json()["error"]["message"]


@pytest.mark.parametrize("url", ["http://[::1", "http://[::1/a.wav"])
def test_a_malformed_input_url_is_bad_input_naming_the_field(
    client: httpx.Client, avatar_video: Path, url: str
) -> None:
    reply = client.post(
        "/easy/submit", json={"audio_url": url, "video_url": avatar_video.name, "code": "m"}
    )
    assert reply.status_code != 500, reply.text
    body = reply.json()
    assert body["code"] == BAD_PARAM and "audio_url" in body["msg"], body


def _local_name() -> str:
    """This machine's own name, when it resolves to a non-public address (it usually
    resolves to loopback): a name the URL check cannot judge and the connection must."""
    name = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    except OSError:
        pytest.skip(f"this machine's name '{name}' does not resolve")
    if not all(refusal(ipaddress.ip_address(a)) for a in addresses):
        pytest.skip(f"this machine's name '{name}' resolves to a public address")
    return name


def test_a_webhook_whose_host_resolves_to_a_local_address_is_refused_without_an_oracle(
    client: httpx.Client, avatar_id: str, tiny_speech: Path
) -> None:
    name = _local_name()
    with webhook_sink([]) as sink:
        url = sink.url.replace("127.0.0.1", name)
        reply = submit_job(client, tiny_speech, avatar_id=avatar_id, webhook_url=url)
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["id"]
        job = poll_until(
            lambda: client.get(f"/v1/jobs/{job_id}").json(),
            lambda job: job["webhook"] and "delivered" in job["webhook"],
            60.0,
            "webhook outcome recorded",
        )
    assert sink.received == []
    webhook = job["webhook"]
    assert webhook["delivered"] is False
    assert webhook["attempts"] == 1  # a refusal is final: retrying would not change it
    assert webhook.get("status_code") is None
    assert webhook["error"].startswith("refused: ") and "resolves to" in webhook["error"]
