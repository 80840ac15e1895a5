"""`dh serve` with DH_STORAGE_URL=s3://...: inputs, prepared avatars and results in a real
S3 server (SeaweedFS, tests/s3server.py), scratch on local disk and removed, results with
Range, an avatar prepared by one replica used by another, and S3 outages."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orchestrator.triton import TritonClient
from synthmedia.audio import voiced_speech, write_audio
from synthmedia.avatar import write_avatar_video
from tests.api.conftest import AVATAR_FPS, AVATAR_SIZE, SPEECH_RATE, ServerFactory, register_avatar
from tests.api.server import ApiServer, poll_until, submit_job, wait_for_job
from tests.s3server import S3Server, s3_server

__all__ = ["s3_server"]  # the session fixture, used by the tests below
DETECTOR = "face_detector"
# Long enough that S3 can be taken away while the job still needs it.
OUTAGE_SPEECH_S = 5.0
# /readyz's own time beyond the dependency deadline (the HTTP round trip, a loaded host).
READY_SLACK_S = 1.5


def _leftovers(server: ApiServer) -> list[str]:
    """Files left in the server's local scratch (staging, job folders, avatar sources)."""
    service = server.data_dir / "service"
    return sorted(str(p.relative_to(service)) for p in service.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> str:
    return s3_server.make_bucket()


@pytest.fixture(scope="module")
def s3_api(server_factory: ServerFactory, s3_server: S3Server, bucket: str) -> ApiServer:
    """A server that keeps its files in the bucket and streams results."""
    return server_factory(**s3_server.settings(bucket))


@pytest.fixture
def fresh_video(tmp_path: Path) -> Path:
    """An avatar no server has prepared: preparing it runs the detector."""
    path = tmp_path / "fresh.mp4"
    write_avatar_video(path, seconds=0.8, fps=AVATAR_FPS, size=AVATAR_SIZE)
    return path


def test_a_job_keeps_its_files_in_the_bucket_and_serves_ranges_from_it(
    s3_api: ApiServer,
    s3_server: S3Server,
    bucket: str,
    speech: Path,
    avatar_video: Path,
) -> None:
    with s3_api.client() as client:
        accepted = submit_job(client, speech, video=avatar_video)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["id"]
        job = wait_for_job(client, job_id)
        assert job["state"] == "succeeded", job

        whole = client.get(f"/v1/jobs/{job_id}/result")
        part = client.get(f"/v1/jobs/{job_id}/result", headers={"Range": "bytes=100-1099"})
        past_the_end = client.get(
            f"/v1/jobs/{job_id}/result", headers={"Range": f"bytes={len(whole.content)}-"}
        )

    kept = s3_server.client().get_object(Bucket=bucket, Key=f"dh/jobs/{job_id}/result.mp4")
    assert whole.status_code == 200
    assert whole.content == kept["Body"].read()
    assert whole.headers["accept-ranges"] == "bytes"
    assert part.status_code == 206
    assert part.content == whole.content[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{len(whole.content)}"
    assert part.headers["content-length"] == "1000"
    assert past_the_end.status_code == 416
    # Only the result is kept; the inputs went when the job ended, and nothing stays local.
    assert s3_server.keys(bucket, f"dh/jobs/{job_id}/") == [f"dh/jobs/{job_id}/result.mp4"]
    assert _leftovers(s3_api) == []


async def test_an_avatar_prepared_by_one_replica_is_used_by_another_without_detection(
    s3_api: ApiServer,
    server_factory: ServerFactory,
    s3_server: S3Server,
    bucket: str,
    fresh_video: Path,
    speech: Path,
    triton_client: TritonClient,
    tmp_path: Path,
) -> None:
    avatar_id = register_avatar(s3_api, fresh_video)
    with s3_api.client() as client:
        assert client.get(f"/v1/avatars/{avatar_id}").json()["state"] == "ready"
    assert f"dh/avatars/{avatar_id}/complete.json" in s3_server.keys(bucket)
    # Replica B: its own data directory, the same bucket, results by presigned redirect.
    other = server_factory(
        tmp_path / "replica-b", **s3_server.settings(bucket), s3_result_delivery="redirect"
    )
    before = (await triton_client.statistics(DETECTOR)).inference_count

    assert register_avatar(other, fresh_video) == avatar_id
    with other.client() as client:
        job_id = submit_job(client, speech, avatar_id=avatar_id).json()["id"]
        job = wait_for_job(client, job_id)
        redirect = client.get(f"/v1/jobs/{job_id}/result", follow_redirects=False)

    assert job["state"] == "succeeded", job
    assert (await triton_client.statistics(DETECTOR)).inference_count == before
    assert redirect.status_code == 307
    async with httpx.AsyncClient(timeout=10.0) as store_client:  # straight to the store
        served = await store_client.get(redirect.headers["location"])
    assert served.status_code == 200
    kept = s3_server.client().get_object(Bucket=bucket, Key=f"dh/jobs/{job_id}/result.mp4")
    assert served.content == kept["Body"].read()
    assert _leftovers(other) == []


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[S3Server]:
    """An S3 server of the test's own, to take away and bring back."""
    server = S3Server(tmp_path / "own-s3").start()
    yield server
    server.stop()


def test_s3_going_away_fails_readiness_and_submissions_and_loses_no_job(
    server_factory: ServerFactory, own_s3: S3Server, avatar_video: Path, tmp_path: Path
) -> None:
    speech = tmp_path / "speech.wav"
    write_audio(speech, voiced_speech(OUTAGE_SPEECH_S), SPEECH_RATE)
    api = server_factory(
        tmp_path / "data",
        **own_s3.settings(own_s3.make_bucket()),
        s3_timeout_s=2,
        # Past this the job stops retrying its S3 calls and goes back to the queue (an
        # outage shorter than it costs nothing: tests/storage/test_s3_storage.py).
        s3_retry_deadline_s=3,
        # Each outage met costs an attempt; a restarting S3 server may cost one more.
        max_attempts=5,
    )
    with api.client() as client:
        job_id = submit_job(client, speech, video=avatar_video).json()["id"]
        own_s3.kill()

        queued = poll_until(
            lambda: client.get(f"/v1/jobs/{job_id}").json(),
            lambda job: job["state"] == "queued" and job.get("error") is not None,
            30.0,
            "the job back in the queue",
        )
        ready = client.get("/readyz")
        refused = submit_job(client, speech, video=avatar_video)

        assert queued["error"]["stage"] == "storage", queued
        assert ready.status_code == 503
        assert "object storage" in ready.json()["error"]["message"]
        assert refused.status_code == 503, refused.text
        assert "object storage" in refused.json()["error"]["message"]
        assert refused.json()["error"]["retryable"] is True
        assert refused.headers["Retry-After"], "a 503 for an outage says when to retry"
        assert own_s3.secret_key not in ready.text + refused.text

        own_s3.start()
        done = wait_for_job(client, job_id, deadline_s=60.0)
        assert done["state"] == "succeeded", done
        assert done["attempts"] >= 2
        assert client.get(f"/v1/jobs/{job_id}/result").status_code == 200
        assert client.get("/readyz").status_code == 200
    assert own_s3.secret_key not in api.log(lines=10_000)


def test_serve_exits_with_one_line_naming_an_unreachable_bucket(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    nowhere = S3Server(tmp_path / "never-started")  # its ports are free: nothing listens

    with pytest.raises(RuntimeError, match="dh serve exited") as caught:
        server_factory(tmp_path / "data", **nowhere.settings("dh-nowhere"), s3_timeout_s=1)

    last = str(caught.value).strip().splitlines()[-1]
    assert last.startswith("dh: storage: object storage s3://dh-nowhere/dh at"), last
    assert nowhere.endpoint_url in last
    assert nowhere.secret_key not in str(caught.value)


def test_a_bucket_that_stops_answering_fails_readiness_within_the_deadline(
    server_factory: ServerFactory, own_s3: S3Server, tmp_path: Path
) -> None:
    """A frozen S3 server accepts connections and never answers: as down as a dead one,
    and /readyz says so within DH_DEPENDENCY_CHECK_TIMEOUT_S, naming it."""
    api = server_factory(
        tmp_path / "data", **own_s3.settings(own_s3.make_bucket()), dependency_check_timeout_s=1
    )
    with api.client() as client:
        assert client.get("/readyz").status_code == 200
        os.kill(own_s3.pid, signal.SIGSTOP)  # the test's own server, by its PID
        try:
            started = time.monotonic()
            frozen = client.get("/readyz")
            took = time.monotonic() - started
        finally:
            os.kill(own_s3.pid, signal.SIGCONT)
        poll_until(
            lambda: client.get("/readyz").status_code,
            lambda status: status == 200,
            30.0,
            "ready again once the bucket answers",
        )

    assert frozen.status_code == 503, frozen.text
    assert frozen.headers["Retry-After"]
    body = frozen.json()
    assert list(body["down"]) == ["storage"], body
    assert "object storage" in body["down"]["storage"][0], body
    assert body["error"]["retryable"] is True
    assert took < 1 + READY_SLACK_S, f"/readyz took {took:.1f} s with a frozen bucket"
