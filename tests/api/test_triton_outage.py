"""A Triton outage under the service: jobs wait for Triton instead of failing, nothing is
lost, and readiness follows Triton back within 2 s."""

from __future__ import annotations

import time
from pathlib import Path

from synthmedia.avatar import write_avatar_video
from tests.api.conftest import AVATAR_SIZE, ServerFactory, register_avatar
from tests.api.server import poll_until, submit_job, wait_for_job, wait_until_rendering
from tests.outage import KillableTriton

RETRY_DEADLINE_S = 1.0
REQUEUED_WITHIN_S = 20.0
READY_AGAIN_WITHIN_S = 2.0
RENDER_DEADLINE_S = 180.0


def test_a_job_whose_triton_dies_waits_in_the_queue_and_succeeds_when_it_is_back(
    server_factory: ServerFactory,
    killable_triton: KillableTriton,
    avatar_video: Path,
    long_speech: Path,
    tiny_speech: Path,
) -> None:
    server = server_factory(
        triton_url=killable_triton.grpc_url,
        triton_metrics_url=killable_triton.metrics_url,
        triton_retry_deadline_s=RETRY_DEADLINE_S,
        max_attempts=3,
        max_running_jobs=1,
    )
    avatar_id = register_avatar(server, avatar_video)
    with server.client() as client:
        first = submit_job(client, long_speech, avatar_id=avatar_id).json()["id"]
        wait_until_rendering(client, first)

        killable_triton.kill()
        requeued = poll_until(
            lambda: client.get(f"/v1/jobs/{first}").json(),
            lambda job: job["state"] == "queued" and job["attempts"] == 1,
            REQUEUED_WITHIN_S,
            "the job back in the queue",
        )
        not_ready = client.get("/readyz")
        # Accepted while Triton is away; it must not start until Triton is back.
        second = submit_job(client, tiny_speech, avatar_id=avatar_id)

        killable_triton.start()
        back_at = time.monotonic()
        poll_until(
            lambda: client.get("/readyz").status_code,
            lambda status: status == 200,
            READY_AGAIN_WITHIN_S,
            "/readyz ready again",
        )
        ready_after_s = time.monotonic() - back_at
        jobs = [
            wait_for_job(client, job_id, RENDER_DEADLINE_S)
            for job_id in (first, second.json()["id"])
        ]
    server.stop()

    assert requeued["error"]["stage"] == "infer", requeued
    assert "unavailable" in requeued["error"]["message"], requeued
    assert not_ready.status_code == 503
    assert "unavailable" in not_ready.json()["error"]["message"], not_ready.json()
    assert second.status_code == 202, second.text
    assert ready_after_s <= READY_AGAIN_WITHIN_S
    assert [job["state"] for job in jobs] == ["succeeded", "succeeded"], jobs
    assert jobs[0]["attempts"] == 2, "the cut-off run counts, and only it"
    assert jobs[0]["error"] is None
    assert jobs[1]["attempts"] == 1, "a job submitted during the outage started only after it"


def test_an_avatar_whose_triton_dies_is_prepared_when_triton_is_back(
    server_factory: ServerFactory, killable_triton: KillableTriton, tmp_path: Path
) -> None:
    video = tmp_path / "new-face.mp4"  # not prepared before: detection runs
    write_avatar_video(video, seconds=3.0, fps=25, size=AVATAR_SIZE)
    server = server_factory(
        triton_url=killable_triton.grpc_url,
        triton_metrics_url=killable_triton.metrics_url,
        triton_retry_deadline_s=RETRY_DEADLINE_S,
        detect_every=1,
    )
    with server.client() as client:
        reply = client.post("/v1/avatars", files={"video": (video.name, video.read_bytes())})
        avatar_id = reply.json()["id"]
        poll_until(
            lambda: client.get(f"/v1/avatars/{avatar_id}").json(),
            lambda avatar: avatar["frames_decoded"] > 0 or avatar["state"] != "preparing",
            60.0,
            "the avatar being prepared",
        )
        killable_triton.kill()
        poll_until(
            lambda: client.get("/readyz").status_code,
            lambda status: status == 503,
            REQUEUED_WITHIN_S,
            "/readyz not ready",
        )
        during = client.get(f"/v1/avatars/{avatar_id}").json()
        killable_triton.start()
        avatar = poll_until(
            lambda: client.get(f"/v1/avatars/{avatar_id}").json(),
            lambda avatar: avatar["state"] != "preparing",
            RENDER_DEADLINE_S,
            "the avatar prepared",
        )
    server.stop()

    assert during["state"] == "preparing", during
    assert avatar["state"] == "ready", avatar
    assert avatar["frames_with_face"] == avatar["frames"] == 75
