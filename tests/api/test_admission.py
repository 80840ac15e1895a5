"""Admission: at most N running, a bounded backlog answered with 429, and deadlines."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.conftest import ServerFactory, register_avatar
from tests.api.server import ApiServer, submit_job, wait_for_job, wait_until_rendering


@pytest.fixture(scope="module")
def one_slot(server_factory: ServerFactory) -> ApiServer:
    return server_factory(max_running_jobs=1, max_backlog=1)


def test_a_full_backlog_answers_429_with_retry_after_and_a_queued_job_can_be_cancelled(
    one_slot: ApiServer, avatar_video: Path, long_speech: Path, tiny_speech: Path
) -> None:
    avatar_id = register_avatar(one_slot, avatar_video)
    with one_slot.client() as client:
        running = submit_job(client, long_speech, avatar_id=avatar_id).json()["id"]
        wait_until_rendering(client, running)
        queued = submit_job(client, tiny_speech, avatar_id=avatar_id)
        assert queued.status_code == 202

        refused = submit_job(client, tiny_speech, avatar_id=avatar_id)

        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert "backlog is full" in refused.json()["error"]["message"]
        # A refused job leaves no upload behind: only the two admitted jobs have files.
        service = one_slot.data_dir / "service"
        kept = sorted(folder.name for folder in (service / "jobs").iterdir())
        assert kept == sorted([running, queued.json()["id"]])
        assert list((service / "staging").iterdir()) == []
        assert client.get(f"/v1/jobs/{queued.json()['id']}").json()["state"] == "queued"

        cancelled = client.delete(f"/v1/jobs/{queued.json()['id']}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        assert submit_job(client, tiny_speech, avatar_id=avatar_id).status_code == 202
        client.delete(f"/v1/jobs/{running}")
        assert wait_for_job(client, running)["state"] == "cancelled"


def test_a_job_past_its_deadline_fails_saying_so(
    server_factory: ServerFactory, avatar_video: Path, long_speech: Path
) -> None:
    tight = server_factory(job_deadline_base_s=1.0, job_deadline_per_audio_s=0.0)
    avatar_id = register_avatar(tight, avatar_video)
    with tight.client() as client:
        job = wait_for_job(
            client, submit_job(client, long_speech, avatar_id=avatar_id).json()["id"]
        )
    tight.stop()

    assert job["state"] == "failed"
    assert "deadline of 1 s" in job["error"]["message"]
    assert job["error"]["stage"] in ("decode", "avatar", "drive", "infer", "composite", "encode")
