"""Two Tritons behind one DH_TRITON_URL: gRPC's round_robin spreads a job's requests over
both, and one of them dying in the middle of the job costs retries, not the job."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.triton import TritonClient
from synthmedia.audio import voiced_speech, write_audio
from synthmedia.avatar import write_avatar_video
from tests.api.conftest import (
    API_KEY,
    AVATAR_FPS,
    AVATAR_SECONDS,
    AVATAR_SIZE,
    BASE_SETTINGS,
    SPEECH_RATE,
    register_avatar,
)
from tests.api.server import ApiServer, poll_until, submit_job, wait_for_job, wait_until_rendering
from tests.conftest import TRITON_VENV
from tests.outage import KillableTriton

LIPSYNC = "lipsync"
# Long enough that the job is still rendering when one Triton is killed (the reference
# model renders ~500 frames/s here: 1500 frames take a few seconds).
SPEECH_S = 60.0
BOTH_SERVING_WITHIN_S = 30.0
RENDER_DEADLINE_S = 120.0
# Short, so that a wrong outcome (every retry refused) fails fast; a retry that finds the
# live server succeeds within the first backoff step (0.1 s).
RETRY_DEADLINE_S = 5.0


@pytest.fixture
def two_tritons(built_models: Path, tmp_path: Path) -> Iterator[tuple[KillableTriton, ...]]:
    """Two servers of the production models, as the `killable_triton` fixture starts one.
    Started from this thread, one after the other: a server gets a parent-death signal,
    which fires when the *thread* that started it ends (a pool's worker would kill it)."""
    tritons = tuple(
        KillableTriton(built_models, tmp_path / f"triton-{i}", TRITON_VENV) for i in range(2)
    )
    try:
        for triton in tritons:
            triton.start()
        yield tritons
    finally:
        for triton in tritons:
            triton.stop()


def lipsync_requests(triton: KillableTriton) -> int:
    """Lipsync requests this one server has executed, from its own statistics."""

    async def read() -> int:
        async with TritonClient(triton.grpc_url) as client:
            return (await client.statistics(LIPSYNC)).inference_count

    return asyncio.run(read())


def test_a_job_outlives_one_of_two_tritons_and_both_served_it(
    two_tritons: tuple[KillableTriton, KillableTriton], tmp_path: Path
) -> None:
    first, second = two_tritons
    video, speech = tmp_path / "avatar.mp4", tmp_path / "speech.wav"
    write_avatar_video(video, seconds=AVATAR_SECONDS, fps=AVATAR_FPS, size=AVATAR_SIZE)
    write_audio(speech, voiced_speech(SPEECH_S), SPEECH_RATE)
    server = ApiServer(
        data_dir=tmp_path / "data",
        settings={
            **BASE_SETTINGS,
            # "127.0.0.1:p1,127.0.0.1:p2": gRPC's ipv4: multi-address target.
            "triton_url": ",".join(triton.grpc_url for triton in two_tritons),
            "triton_metrics_url": first.metrics_url,
            "triton_retry_deadline_s": RETRY_DEADLINE_S,
            "api_key": API_KEY,
            "max_running_jobs": 1,
        },
        log_path=tmp_path / "server.log",
    ).start()
    try:
        avatar_id = register_avatar(server, video)
        before = [lipsync_requests(triton) for triton in two_tritons]
        with server.client() as client:
            job_id = submit_job(client, speech, avatar_id=avatar_id).json()["id"]
            wait_until_rendering(client, job_id)
            at_kill = poll_until(
                lambda: [lipsync_requests(triton) for triton in two_tritons],
                lambda counts: all(now > then for now, then in zip(counts, before, strict=True)),
                BOTH_SERVING_WITHIN_S,
                "both Tritons serving the job",
            )
            second.kill()
            when_killed = client.get(f"/v1/jobs/{job_id}").json()
            job = wait_for_job(client, job_id, RENDER_DEADLINE_S)
            ready = client.get("/readyz").status_code
        after = lipsync_requests(first)
    finally:
        server.stop()

    assert when_killed["state"] == "running", "the kill must land in the middle of the job"
    assert when_killed["progress"]["frames_done"] < when_killed["progress"]["frames_total"]
    assert job["state"] == "succeeded", (job, server.log())
    assert job["attempts"] == 1, "a dead Triton beside a live one costs retries, not a restart"
    assert job["error"] is None
    assert at_kill[1] > before[1], "the second Triton served part of the job before it died"
    assert after > at_kill[0], "the first Triton served the rest"
    assert ready == 200, "one live Triton keeps the service ready"
