"""Two `dh serve` replicas on one PostgreSQL and one Triton behave as one service.

Jobs are spread over both and each is rendered once; a killed replica's job is finished
by the other once its lease expires; a cancel sent to either replica stops the job where
it runs; an avatar prepared through one is used through the other without detection; and
the backlog bound holds for the whole fleet.
"""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg

from orchestrator.settings import Settings
from orchestrator.triton import TritonClient
from synthmedia.audio import voiced_speech, write_audio
from synthmedia.avatar import write_avatar_video
from tests.api.conftest import AVATAR_SIZE, SPEECH_RATE, register_avatar
from tests.api.server import ApiServer, poll_until, submit_job, wait_for_job, wait_until_rendering
from tests.conftest import TritonAddress
from tests.fleet.conftest import HEARTBEAT_S, LEASE_S, Fleet

JOB_DEADLINE_S = 90.0
TAKEOVER_S = LEASE_S + HEARTBEAT_S
CANCEL_WITHIN_S = 2.0


def _row(server: ApiServer, job_id: str) -> dict[str, Any]:
    """The job's row as the store keeps it (which replica holds it, ...)."""
    url = str(server.settings["database_url"])
    with psycopg.connect(url) as connection:
        row = connection.execute(
            "SELECT body, lease_owner FROM jobs WHERE id=%s", (job_id,)
        ).fetchone()
    assert row is not None
    return {**row[0], "lease_owner": row[1]}


def _holder(servers: list[ApiServer], job_id: str) -> tuple[ApiServer, ApiServer]:
    """(the replica rendering the job, the other one)."""
    owner = _row(servers[0], job_id)["lease_owner"] or ""
    first, second = servers
    if owner.startswith(str(first.settings["replica_id"]) + "#"):
        return first, second
    assert owner.startswith(str(second.settings["replica_id"]) + "#"), owner
    return second, first


def _starts(servers: list[ApiServer], job_id: str) -> int:
    logs = {server.log_path for server in servers}
    pattern = re.compile(rf"job {job_id} started")
    return sum(len(pattern.findall(path.read_text(errors="replace"))) for path in logs)


def test_twelve_jobs_sent_to_both_replicas_all_succeed_each_rendered_once(
    fleet: Fleet, avatar_video: Path, tiny_speech: Path
) -> None:
    servers = fleet(2)
    avatar_id = register_avatar(servers[0], avatar_video)
    clients = [server.client() for server in servers]
    try:
        job_ids = []
        for index in range(12):
            reply = submit_job(clients[index % 2], tiny_speech, avatar_id=avatar_id)
            assert reply.status_code == 202, reply.text
            job_ids.append(reply.json()["id"])
        jobs = [
            wait_for_job(clients[i % 2], job_id, JOB_DEADLINE_S) for i, job_id in enumerate(job_ids)
        ]
        # Either replica tells the same story of every job.
        seen_by_other = [
            clients[(i + 1) % 2].get(f"/v1/jobs/{j}").json() for i, j in enumerate(job_ids)
        ]
        listed = {
            job["id"] for job in clients[1].get("/v1/jobs", params={"limit": 50}).json()["items"]
        }
    finally:
        for client in clients:
            client.close()

    assert [job["state"] for job in jobs] == ["succeeded"] * 12, jobs
    assert [job["attempts"] for job in jobs] == [1] * 12
    assert seen_by_other == jobs
    assert set(job_ids) <= listed
    assert [_starts(servers, job_id) for job_id in job_ids] == [1] * 12, "each rendered once"
    replicas = {_row(servers[0], job_id)["replica"] for job_id in job_ids}
    assert all(replicas), replicas


def test_a_killed_replicas_job_is_finished_by_the_other_after_its_lease_expires(
    fleet: Fleet, avatar_video: Path, long_speech: Path
) -> None:
    servers = fleet(2)
    avatar_id = register_avatar(servers[0], avatar_video)
    with servers[0].client() as client:
        job_id = submit_job(client, long_speech, avatar_id=avatar_id).json()["id"]
        assert wait_until_rendering(client, job_id)["state"] == "running"
    holder, survivor = _holder(servers, job_id)
    holder.kill()  # SIGKILL: its lease is never given back

    with survivor.client() as client:
        taken_over = poll_until(
            lambda: client.get(f"/v1/jobs/{job_id}").json(),
            lambda job: job["attempts"] == 2,
            TAKEOVER_S + 10,
            "the job started again by the survivor",
        )
        job = wait_for_job(client, job_id, JOB_DEADLINE_S)
        result = client.get(f"/v1/jobs/{job_id}/result")

    assert taken_over["attempts"] == 2
    assert job["state"] == "succeeded", job
    assert job["attempts"] == 2, "the interrupted attempt is counted"
    assert result.status_code == 200 and len(result.content) == job["result"]["bytes"]
    assert _row(survivor, job_id)["replica"].startswith(str(survivor.settings["replica_id"]))


def test_a_cancel_sent_to_the_other_replica_stops_the_job_within_two_seconds(
    fleet: Fleet, avatar_video: Path, long_speech: Path
) -> None:
    servers = fleet(2)
    avatar_id = register_avatar(servers[0], avatar_video)
    with servers[0].client() as client:
        job_id = submit_job(client, long_speech, avatar_id=avatar_id).json()["id"]
        wait_until_rendering(client, job_id)
    holder, other = _holder(servers, job_id)

    with other.client() as client, holder.client() as holder_client:
        asked = time.monotonic()
        reply = client.delete(f"/v1/jobs/{job_id}")
        answered = time.monotonic() - asked
        at_holder = poll_until(
            lambda: holder_client.get(f"/v1/jobs/{job_id}").json(),
            lambda job: job["state"] != "running",
            CANCEL_WITHIN_S,
            "the job stopped where it runs",
        )
    stopped = time.monotonic() - asked

    assert reply.status_code == 200, reply.text
    assert reply.json()["state"] == "cancelled", reply.json()
    assert answered < CANCEL_WITHIN_S and stopped < CANCEL_WITHIN_S
    assert at_holder["state"] == "cancelled"
    assert at_holder["error"]["message"] == "cancelled by the client"


def test_an_avatar_prepared_through_one_replica_is_used_through_the_other_without_detection(
    fleet: Fleet, triton: TritonAddress, speech: Path, tmp_path: Path
) -> None:
    servers = fleet(2)
    video = tmp_path / "fresh-face.mp4"  # a video no cache holds: replica A really detects
    write_avatar_video(video, seconds=1.6, fps=25, size=AVATAR_SIZE)
    avatar_id = register_avatar(servers[0], video)
    before = _detector_requests(triton)

    with servers[1].client() as client:
        job_id = submit_job(client, speech, avatar_id=avatar_id).json()["id"]
        job = wait_for_job(client, job_id, JOB_DEADLINE_S)

    assert job["state"] == "succeeded", job
    assert _detector_requests(triton) == before, "replica B ran the face detector"


def test_the_backlog_bound_holds_for_the_whole_fleet_and_no_accepted_job_is_lost(
    fleet: Fleet, avatar_video: Path, tmp_path: Path
) -> None:
    backlog, slots_each = 4, 1
    servers = fleet(2, max_backlog=backlog, max_running_jobs=slots_each)
    avatar_id = register_avatar(servers[0], avatar_video)
    audio = tmp_path / "ten-seconds.wav"  # long enough that none ends while others arrive
    write_audio(audio, voiced_speech(10.0), SPEECH_RATE)
    clients = [server.client() for server in servers]
    try:
        with ThreadPoolExecutor(6) as pool:
            replies = list(
                pool.map(
                    lambda i: submit_job(clients[i % 2], audio, avatar_id=avatar_id), range(12)
                )
            )
        accepted = [reply.json()["id"] for reply in replies if reply.status_code == 202]
        refused = [reply for reply in replies if reply.status_code == 429]
        jobs = [wait_for_job(clients[0], job_id, JOB_DEADLINE_S * 2) for job_id in accepted]
    finally:
        for client in clients:
            client.close()

    assert len(accepted) + len(refused) == 12
    # The whole fleet's backlog plus its free slots (one per replica), whichever replica.
    assert backlog <= len(accepted) <= backlog + 2 * slots_each, len(accepted)
    assert all(int(reply.headers["Retry-After"]) >= 1 for reply in refused)
    assert [job["state"] for job in jobs] == ["succeeded"] * len(accepted)


def _detector_requests(triton: TritonAddress) -> int:
    async def count() -> int:
        async with TritonClient(triton.grpc_url) as client:
            return (await client.statistics(Settings().detector_model)).inference_count

    return asyncio.run(count())
