"""Restart recovery: a server killed mid-job comes back and the job still finishes."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthmedia.avatar import write_avatar_video
from tests.api.conftest import AVATAR_SIZE, ServerFactory, register_avatar
from tests.api.server import (
    TERMINAL,
    poll_until,
    submit_job,
    wait_for_job,
    wait_until_rendering,
)

RENDER_DEADLINE_S = 120.0


def _kill_mid_job(
    server_factory: ServerFactory,
    data_dir: Path,
    avatar_video: Path,
    audio: Path,
    **settings: object,
) -> str:
    first = server_factory(data_dir=data_dir, **settings)
    avatar_id = register_avatar(first, avatar_video)
    with first.client() as client:
        job_id: str = submit_job(client, audio, avatar_id=avatar_id).json()["id"]
        rendering = wait_until_rendering(client, job_id)
    assert rendering["state"] == "running", rendering
    first.kill()  # SIGKILL: no shutdown code runs
    return job_id


def test_a_job_cut_off_by_sigkill_runs_again_after_restart_and_finishes(
    server_factory: ServerFactory, avatar_video: Path, long_speech: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    job_id = _kill_mid_job(server_factory, data_dir, avatar_video, long_speech, max_attempts=3)

    second = server_factory(data_dir=data_dir, max_attempts=3)
    with second.client() as client:
        job = wait_for_job(client, job_id, RENDER_DEADLINE_S)
        result = client.get(f"/v1/jobs/{job_id}/result")
    second.stop()

    assert job["state"] == "succeeded", job
    assert job["attempts"] == 2
    assert result.status_code == 200 and len(result.content) == job["result"]["bytes"]


def test_a_job_interrupted_more_than_max_attempts_fails_as_interrupted(
    server_factory: ServerFactory, avatar_video: Path, long_speech: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    job_id = _kill_mid_job(server_factory, data_dir, avatar_video, long_speech, max_attempts=1)

    second = server_factory(data_dir=data_dir, max_attempts=1)
    with second.client() as client:
        job = client.get(f"/v1/jobs/{job_id}").json()
    second.stop()

    assert job["state"] == "failed"
    assert job["error"]["message"].startswith("interrupted")
    assert not (data_dir / "service" / "jobs" / job_id).exists()


@pytest.mark.parametrize("queued_jobs", [2])
def test_queued_jobs_survive_a_graceful_restart(
    server_factory: ServerFactory,
    avatar_video: Path,
    long_speech: Path,
    tiny_speech: Path,
    tmp_path: Path,
    queued_jobs: int,
) -> None:
    data_dir = tmp_path / "data"
    first = server_factory(data_dir=data_dir, max_running_jobs=1)
    avatar_id = register_avatar(first, avatar_video)
    with first.client() as client:
        running = submit_job(client, long_speech, avatar_id=avatar_id).json()["id"]
        wait_until_rendering(client, running)
        queued = [
            submit_job(client, tiny_speech, avatar_id=avatar_id).json()["id"]
            for _ in range(queued_jobs)
        ]
    assert first.stop_gracefully()

    second = server_factory(data_dir=data_dir, max_running_jobs=2)
    with second.client() as client:
        jobs = [wait_for_job(client, job_id, RENDER_DEADLINE_S) for job_id in [running, *queued]]
    second.stop()

    assert [job["state"] for job in jobs] == ["succeeded"] * (queued_jobs + 1)
    assert jobs[0]["attempts"] == 1, "a graceful stop must not count as an attempt"


def test_a_job_interrupted_while_preparing_its_avatar_fails_in_the_avatar_stage(
    server_factory: ServerFactory, speech: Path, tmp_path: Path
) -> None:
    # A video no test has prepared, detected on every frame: preparing it takes seconds.
    video = tmp_path / "new-face.mp4"
    write_avatar_video(video, seconds=3.0, fps=25, size=AVATAR_SIZE)
    data_dir = tmp_path / "data"
    first = server_factory(data_dir=data_dir, max_attempts=1, detect_every=1)
    with first.client() as client:
        job_id = submit_job(client, speech, video=video).json()["id"]
        poll_until(
            lambda: client.get(f"/v1/jobs/{job_id}").json(),
            lambda job: job["progress"]["stage"] == "avatar" or job["state"] in TERMINAL,
            60.0,
            "the job preparing its avatar",
        )
        # The stage is stored as it changes, after the live figure this answer showed.
        client.get(f"/v1/jobs/{job_id}")
    first.kill()  # SIGKILL: no shutdown code runs

    second = server_factory(data_dir=data_dir, max_attempts=1)
    with second.client() as client:
        job = client.get(f"/v1/jobs/{job_id}").json()
    second.stop()

    assert job["state"] == "failed", job
    assert job["error"]["stage"] == "avatar", job["error"]
    assert job["error"]["message"].startswith("interrupted"), job["error"]
    assert not list((data_dir / "avatars").glob(".*.partial")), "start-up clears partial avatars"
