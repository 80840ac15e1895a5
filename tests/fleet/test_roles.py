"""A fleet split by role: one `dh api` and two `dh worker`s on one PostgreSQL (and S3).

A new video reaches the face detector once however many workers get it at the same time:
a registered avatar is prepared by one worker only, and two jobs with the same new
one-off video, each rendered by a different worker at once, share one preparation (one
holds the preparation lease, the other waits for its result). The detector's own request
count on Triton is the witness.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from synthmedia.avatar import write_avatar_video
from tests.api.conftest import AVATAR_SIZE, ServerFactory, register_avatar
from tests.api.server import ApiServer, submit_job, wait_for_job
from tests.conftest import TritonAddress
from tests.engines import PostgresEngine
from tests.fleet.conftest import FLEET_SETTINGS, FLEET_STORAGE
from tests.fleet.test_replicas import _detector_requests

JOB_DEADLINE_S = 90.0
WAITED = "is being prepared by another replica; waiting"


def _split_fleet(
    server_factory: ServerFactory,
    postgres: PostgresEngine,
    tmp_path: Path,
    request: object,
    workers: int,
) -> tuple[ApiServer, list[ApiServer]]:
    shared: dict[str, object] = {
        "database_url": postgres.create_database(),
        **FLEET_SETTINGS,
        "max_running_jobs": 1,  # two jobs at once land on two workers
    }
    if FLEET_STORAGE == "s3":
        s3 = request.getfixturevalue("s3_server")  # type: ignore[attr-defined]
        shared.update(s3.settings(s3.make_bucket()))

    def data_dir(name: str) -> Path:
        return tmp_path / ("data" if FLEET_STORAGE == "disk" else f"data-{name}")

    api = server_factory(data_dir=data_dir("api"), role="api", replica_id="api", **shared)
    started = [
        server_factory(
            data_dir=data_dir(f"worker-{i}"), role="worker", replica_id=f"worker-{i}", **shared
        )
        for i in range(workers)
    ]
    return api, started


def _starts(workers: list[ApiServer], job_id: str) -> list[int]:
    pattern = re.compile(rf"job {job_id} started")
    return [len(pattern.findall(worker.log(2000))) for worker in workers]


def test_one_new_video_given_to_two_workers_at_once_is_prepared_once(
    server_factory: ServerFactory,
    postgres: PostgresEngine,
    triton: TritonAddress,
    speech: Path,
    tmp_path: Path,
    request: object,
) -> None:
    api, workers = _split_fleet(server_factory, postgres, tmp_path, request, workers=2)
    registered = tmp_path / "registered-face.mp4"
    write_avatar_video(registered, seconds=1.6, fps=25, size=AVATAR_SIZE)
    one_off = tmp_path / "one-off-face.mp4"  # same frames, other bytes: another content id
    write_avatar_video(one_off, seconds=1.6, fps=25, size=AVATAR_SIZE, audio=True)

    # A registered avatar: every worker hears of it; one prepares it.
    before = _detector_requests(triton)
    avatar_id = register_avatar(api, registered)
    with api.client() as client:
        avatar = client.get(f"/v1/avatars/{avatar_id}").json()
    one_preparation = _detector_requests(triton) - before

    # The same one-off video in two jobs at once: each worker renders one.
    before = _detector_requests(triton)
    with api.client(timeout=60) as client, ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda _: submit_job(client, speech, video=one_off), range(2)))
        assert [reply.status_code for reply in replies] == [202, 202], [r.text for r in replies]
        jobs = [wait_for_job(client, reply.json()["id"], JOB_DEADLINE_S) for reply in replies]
    both_jobs = _detector_requests(triton) - before

    assert avatar["state"] == "ready", avatar
    assert one_preparation == avatar["detected_frames"] > 0, (one_preparation, avatar)
    preparing = [w for w in workers if f"avatar {avatar_id}: preparing it here" in w.log(2000)]
    assert len(preparing) == 1, "one worker prepared the registered avatar"
    assert [job["state"] for job in jobs] == ["succeeded"] * 2, jobs
    # Each job rendered on its own worker, and the video was detected once between them.
    assert [_starts(workers, job["id"]) for job in jobs] in ([[1, 0], [0, 1]], [[0, 1], [1, 0]])
    assert both_jobs == one_preparation, (both_jobs, one_preparation)
    assert sum(WAITED in worker.log(2000) for worker in workers) == 1
