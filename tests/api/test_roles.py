"""Roles as processes: `dh api` and `dh worker` split what `dh serve` does in one.

`dh api` alone admits and answers with no worker and no Triton; `dh worker` alone answers
only its probes and /metrics; the two on one SQLite data directory register an avatar
(the worker prepares it) and render a job end to end over HTTP.
"""

from __future__ import annotations

from pathlib import Path

from synthmedia.avatar import write_avatar_video
from tests.api.conftest import AVATAR_SIZE, ServerFactory, register_avatar
from tests.api.server import ApiServer, submit_job, wait_for_job

# A worker on its own SQLite file hears no other process's events: it looks at the queue
# every heartbeat, kept short here.
QUICK_LEASES: dict[str, object] = {"lease_s": 4.0, "lease_heartbeat_s": 0.5}
NO_TRITON = "127.0.0.1:1"  # nothing listens there


def test_the_api_alone_queues_a_job_and_answers_with_no_worker_and_no_triton(
    server_factory: ServerFactory, speech: Path, avatar_video: Path, tmp_path: Path
) -> None:
    api: ApiServer = server_factory(
        data_dir=tmp_path / "data", role="api", triton_url=NO_TRITON, triton_ready_timeout_s=1
    )
    with api.client() as client:
        ready = client.get("/readyz")
        reply = submit_job(client, speech, video=avatar_video)
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["id"]
        got = client.get(f"/v1/jobs/{job_id}")
        listed = client.get("/v1/jobs").json()["items"]
        avatar = client.post(
            "/v1/avatars", files={"video": (avatar_video.name, avatar_video.read_bytes())}
        )
        metrics = client.get("/metrics")
        system = client.get("/v1/system")

    assert ready.status_code == 200, ready.text
    assert ready.json() == {
        "ready": True,
        "models": {},
        "role": "api",
        "needs": ["store", "storage"],
    }
    assert got.status_code == 200 and got.json()["state"] == "queued"
    assert [job["id"] for job in listed] == [job_id]
    # Recorded, and left for a worker to prepare: nothing here runs the detector.
    assert avatar.status_code == 201 and avatar.json()["state"] == "preparing"
    assert 'dh_jobs{state="queued"} 1.0' in metrics.text
    assert "Triton ready" not in api.log(400)
    assert system.status_code == 404, "Triton and GPUs are the workers' to report"


def test_a_worker_alone_answers_its_probes_and_metrics_and_nothing_else(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    worker = server_factory(data_dir=tmp_path / "data", role="worker")
    with worker.client() as client:
        health = client.get("/healthz")
        ready = client.get("/readyz")
        metrics = client.get("/metrics")
        jobs = client.get("/v1/jobs")

    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert ready.status_code == 200, ready.text
    assert ready.json()["role"] == "worker"
    assert ready.json()["needs"] == ["triton", "store", "storage"]
    assert set(ready.json()["models"]) == {"lipsync", "face_detector"}
    assert metrics.status_code == 200 and "dh_jobs" in metrics.text
    assert jobs.status_code == 404


def test_api_and_worker_on_one_data_directory_render_a_job_end_to_end(
    server_factory: ServerFactory, speech: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    api = server_factory(data_dir=data_dir, role="api", triton_url=NO_TRITON)
    worker = server_factory(data_dir=data_dir, role="worker", **QUICK_LEASES)
    video = tmp_path / "new-face.mp4"  # no cache holds it: the worker really prepares it
    write_avatar_video(video, seconds=1.2, fps=25, size=AVATAR_SIZE)

    avatar_id = register_avatar(api, video)
    with api.client() as client:
        avatar = client.get(f"/v1/avatars/{avatar_id}").json()
        reply = submit_job(client, speech, avatar_id=avatar_id)
        assert reply.status_code == 202, reply.text
        job = wait_for_job(client, reply.json()["id"], deadline_s=90)
        result = client.get(f"/v1/jobs/{job['id']}/result")

    assert avatar["state"] == "ready", avatar
    assert job["state"] == "succeeded", (job, worker.log())
    assert result.status_code == 200 and len(result.content) == job["result"]["bytes"]
    assert f"job {job['id']} started" in worker.log(400)
    assert f"job {job['id']} started" not in api.log(400)
