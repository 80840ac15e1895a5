"""Completion webhooks: the job's JSON is POSTed, retried after a failure, outcome recorded."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.api.receivers import webhook_sink
from tests.api.server import poll_until, submit_job, wait_for_job

SERVER_ERROR = 500


def test_the_finished_job_is_posted_and_a_failed_delivery_is_retried(
    client: httpx.Client, avatar_id: str, tiny_speech: Path
) -> None:
    with webhook_sink([SERVER_ERROR]) as sink:
        job_id = submit_job(client, tiny_speech, avatar_id=avatar_id, webhook_url=sink.url).json()[
            "id"
        ]
        wait_for_job(client, job_id)
        job = poll_until(
            lambda: client.get(f"/v1/jobs/{job_id}").json(),
            lambda job: job["webhook"] and "delivered" in job["webhook"],
            30.0,
            "webhook outcome recorded",
        )

    assert [posted["id"] for posted in sink.received] == [job_id, job_id]
    assert sink.received[-1]["state"] == "succeeded"
    assert job["webhook"]["delivered"] is True
    assert job["webhook"]["attempts"] == 2
    assert job["webhook"]["status_code"] == 200


def test_an_unreachable_webhook_is_recorded_as_not_delivered(
    client: httpx.Client, avatar_id: str, tiny_speech: Path
) -> None:
    with webhook_sink([]) as sink:
        dead_url = sink.url  # closed when the block ends: nothing listens there any more
    job_id = submit_job(client, tiny_speech, avatar_id=avatar_id, webhook_url=dead_url).json()["id"]

    job = poll_until(
        lambda: client.get(f"/v1/jobs/{job_id}").json(),
        lambda job: job["webhook"] and "delivered" in job["webhook"],
        30.0,
        "webhook outcome recorded",
    )

    assert job["state"] == "succeeded"
    assert job["webhook"]["delivered"] is False
    assert job["webhook"]["attempts"] == 3
    assert "ConnectError" in job["webhook"]["error"]


def test_a_webhook_url_that_is_not_http_is_refused(
    client: httpx.Client, avatar_id: str, tiny_speech: Path
) -> None:
    reply = submit_job(client, tiny_speech, avatar_id=avatar_id, webhook_url="file:///etc/passwd")
    assert reply.status_code == 422
    assert reply.json()["error"]["stage"] == "webhook"
