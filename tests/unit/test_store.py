"""The job store on both engines: records round-trip, survive a reopen, page newest first;
a client code is unique; migrations run once; leases are claimed by one replica only,
renewed by their holder and swept once expired.

Each test runs on SQLite and on a real PostgreSQL (tests.engines) with its own database.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from pathlib import Path

import pytest

from orchestrator.jobs.lifecycle import JobState
from orchestrator.jobs.store import (
    QUEUED,
    RUNNING,
    SUCCEEDED,
    AvatarRecord,
    DuplicateCode,
    JobError,
    JobProgress,
    JobRecord,
    JobResult,
    JobStore,
    SqliteStore,
    StoreUnavailable,
)
from orchestrator.jobs.store.migrations import LATEST, SQLITE
from orchestrator.jobs.store.postgres import PostgresStore
from orchestrator.jobs.store.records import body_json, job_from_row
from tests.engines import PostgresEngine, postgres  # noqa: F401 (registers the fixture)

ENGINES = ["sqlite", "postgres"]
Opener = Callable[[], Awaitable[JobStore]]


def _job(job_id: str, avatar_id: str = "a1", code: str | None = None) -> JobRecord:
    return JobRecord(
        id=job_id,
        created_at=time.time(),
        audio_path="audio.wav",
        video_path="video.mp4",
        avatar_id=avatar_id,
        audio_seconds=1.5,
        deadline_s=30,
        registered_avatar=True,
        client_code=code,
    )


@pytest.fixture(params=ENGINES)
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens another connection to the same database each call (a second replica)."""
    if request.param == "sqlite":
        path = tmp_path / "jobs.db"

        async def open_sqlite() -> JobStore:
            return await SqliteStore(path).open()

        return open_sqlite
    engine: PostgresEngine = request.getfixturevalue("postgres")
    url = engine.create_database()

    async def open_postgres() -> JobStore:
        return await PostgresStore(url).open()

    return open_postgres


@pytest.fixture
async def store(open_store: Opener) -> AsyncIterator[JobStore]:
    opened = await open_store()
    yield opened
    await opened.close()


async def test_a_job_round_trips_and_survives_a_reopen(open_store: Opener) -> None:
    first = await open_store()
    job = await first.add_job(_job("j1"))
    job.state, job.stage_seconds, job.error, job.result = (
        SUCCEEDED,
        {"infer": 1.25},
        JobError("x", "y", retryable=True),
        JobResult(25, 25.0, 64, 48, 1.0, 0, 0.5, 1234),
    )
    await first.save_job(job)
    await first.close()

    second = await open_store()
    loaded = await second.get_job("j1")
    await second.close()

    assert loaded == job
    assert loaded is not None and loaded.seq == job.seq > 0
    assert loaded.state is JobState.SUCCEEDED and isinstance(loaded.result, JobResult)


def test_a_row_written_before_typed_errors_loads() -> None:
    """Old bodies: the state a plain string, an error with no `retryable`, a result with a
    key this version does not know."""
    body = {
        **body_json(_job("j1")),
        "state": "failed",
        "error": {"stage": "infer", "message": "model 'lipsync': gone"},
        "result": {**asdict(JobResult(1, 25.0, 8, 8, 0.04, 0, 0.1, 9)), "later": 1},
    }
    job = job_from_row(json.dumps(body), 7, None, 0)
    assert job.state is JobState.FAILED
    assert job.error == JobError("infer", "model 'lipsync': gone", retryable=False)
    assert job.result == JobResult(1, 25.0, 8, 8, 0.04, 0, 0.1, 9)


async def test_listing_is_newest_first_filtered_and_paged(store: JobStore) -> None:
    for index in range(5):
        job = await store.add_job(_job(f"j{index}"))
        if index % 2 == 0:
            job.state = SUCCEEDED
            await store.save_job(job)

    everything = await store.list_jobs(None, None, 10)
    succeeded = await store.list_jobs(SUCCEEDED, None, 10)
    first_page = await store.list_jobs(None, None, 2)
    second_page = await store.list_jobs(None, first_page[-1].seq, 2)

    assert [job.id for job in everything] == ["j4", "j3", "j2", "j1", "j0"]
    assert [job.id for job in succeeded] == ["j4", "j2", "j0"]
    assert [job.id for job in first_page + second_page] == ["j4", "j3", "j2", "j1"]
    assert await store.count_jobs() == {
        QUEUED: 2,
        RUNNING: 0,
        SUCCEEDED: 3,
        "failed": 0,
        "cancelled": 0,
    }
    assert [job.id for job in await store.jobs_in((QUEUED,))] == ["j1", "j3"]


async def test_a_client_code_used_twice_is_a_duplicate_code_on_every_engine(
    store: JobStore,
) -> None:
    await store.add_job(_job("j1", code="abc"))

    with pytest.raises(DuplicateCode) as raised:
        await store.add_job(_job("j2", code="abc"))

    assert "abc" in raised.value.message
    found = await store.job_by_code("abc")
    assert found is not None and found.id == "j1"
    assert await store.get_job("j2") is None


async def test_an_avatar_is_in_use_only_while_a_job_is_active(store: JobStore) -> None:
    await store.add_avatar(AvatarRecord(id="a1", created_at=0.0, source_path="s", source_name="n"))
    job = await store.add_job(_job("j1", avatar_id="a1"))

    assert await store.avatar_in_use("a1")
    job.state = SUCCEEDED
    await store.save_job(job)
    assert not await store.avatar_in_use("a1")
    await store.delete_avatar("a1")
    assert await store.get_avatar("a1") is None


async def test_a_claim_takes_the_oldest_queued_job_and_counts_the_attempt(
    store: JobStore,
) -> None:
    for index in range(2):
        await store.add_job(_job(f"j{index}"))

    claimed = await store.claim_job("replica-a#1", lease_s=30)

    assert claimed is not None and claimed.id == "j0"
    assert (claimed.state, claimed.attempts, claimed.replica) == (RUNNING, 1, "replica-a#1")
    assert claimed.lease_owner == "replica-a#1"
    stored = await store.get_job("j0")
    assert stored is not None and stored.state == RUNNING and stored.attempts == 1
    assert [job.id for job in await store.jobs_in((QUEUED,))] == ["j1"]


async def test_two_replicas_claiming_at_once_never_get_the_same_job(open_store: Opener) -> None:
    first, second = await open_store(), await open_store()
    for index in range(20):
        await first.add_job(_job(f"j{index}"))

    async def claim_all(store: JobStore, owner: str) -> list[str]:
        claimed: list[str] = []
        while (job := await store.claim_job(owner, lease_s=30)) is not None:
            claimed.append(job.id)
        return claimed

    by_a, by_b = await asyncio.gather(claim_all(first, "a#1"), claim_all(second, "b#1"))
    await first.close()
    await second.close()

    assert not set(by_a) & set(by_b)
    assert sorted(by_a + by_b) == sorted(f"j{index}" for index in range(20))


async def test_a_heartbeat_renews_only_the_holders_lease_and_reports_a_cancel(
    store: JobStore,
) -> None:
    await store.add_job(_job("j1"))
    assert await store.claim_job("a#1", lease_s=30) is not None
    progress = JobProgress("infer", 10, 40, 12.5)

    held = await store.heartbeat("j1", "a#1", 30, progress)
    stolen = await store.heartbeat("j1", "b#1", 30, None)
    assert await store.request_cancel("j1")
    cancel = await store.heartbeat("j1", "a#1", 30, None)

    assert (held, stolen, cancel) == (False, None, True)
    job = await store.get_job("j1")
    assert job is not None and job.cancel_requested
    assert (job.stage, job.frames_done, job.frames_total, job.frames_per_second) == (
        "infer",
        10,
        40,
        12.5,
    )


async def test_an_expired_lease_is_stale_and_is_settled_once(open_store: Opener) -> None:
    first, second = await open_store(), await open_store()
    await first.add_job(_job("j1"))
    await first.add_job(_job("j2"))
    assert await first.claim_job("a#1", lease_s=0.01) is not None  # j1: expires at once
    assert await first.claim_job("a#1", lease_s=60) is not None  # j2: held
    await asyncio.sleep(0.05)  # let the short lease lapse (a duration, not a state wait)

    stale = await second.stale_jobs(None)
    assert [job.id for job in stale] == ["j1"]
    job = stale[0]
    job.state = QUEUED
    first_settle = await second.update_stale(job, None)
    second_settle = await first.update_stale(job, None)
    # The holder's heartbeat and outcome no longer count once the job was taken back.
    late_beat = await first.heartbeat("j1", "a#1", 60, None)
    await first.close()
    await second.close()

    assert (first_settle, second_settle, late_beat) == (True, False, None)


async def test_a_restarted_replica_finds_its_previous_incarnations_jobs_at_once(
    store: JobStore,
) -> None:
    await store.add_job(_job("j1"))
    await store.add_job(_job("j2"))
    assert await store.claim_job("host:/data#old", lease_s=60) is not None
    assert await store.claim_job("other:/data#x", lease_s=60) is not None

    mine = await store.stale_jobs("host:/data#")

    assert [job.id for job in mine] == ["j1"]


async def test_an_update_only_lands_while_the_row_is_as_expected(store: JobStore) -> None:
    await store.add_job(_job("j1"))
    job = await store.claim_job("a#1", lease_s=60)
    assert job is not None
    job.state = SUCCEEDED

    by_stranger = await store.update_job(job, was=RUNNING, owner="b#1")
    by_holder = await store.update_job(job, was=RUNNING, owner="a#1")
    again = await store.update_job(job, was=RUNNING, owner="a#1")

    assert (by_stranger, by_holder, again) == (False, True, False)
    stored = await store.get_job("j1")
    assert stored is not None and stored.state == SUCCEEDED and stored.lease_owner is None


async def test_admission_counts_every_replicas_backlog_and_free_slots(open_store: Opener) -> None:
    first, second = await open_store(), await open_store()
    await first.register_replica("a#1", slots=1, ttl_s=60)
    await second.register_replica("b#1", slots=1, ttl_s=60)

    outcomes = []
    for index in range(5):
        store = first if index % 2 == 0 else second
        outcomes.append((await store.admit_job(_job(f"j{index}"), max_backlog=2)).accepted)
    await first.drop_replica("b#1")
    shrunk = await first.admit_job(_job("j9"), max_backlog=2)
    await first.close()
    await second.close()

    # Two slots free in the cluster plus a backlog of two: four jobs, whichever replica.
    assert outcomes == [True, True, True, True, False]
    assert (shrunk.accepted, shrunk.queued, shrunk.capacity) == (False, 4, 1)


async def test_migrations_run_once_and_a_second_replica_changes_nothing(
    open_store: Opener,
) -> None:
    first = await open_store()
    await first.add_job(_job("j1"))
    versions = await _schema_versions(first)
    await first.close()

    # Two replicas starting together, then one more: the first migrated, the rest wait.
    replicas = await asyncio.gather(open_store(), open_store())
    again = await _schema_versions(replicas[0])
    for replica in replicas:
        await replica.close()

    assert [version for version, _ in versions] == list(range(1, LATEST + 1))
    assert again == versions


async def test_a_first_release_sqlite_file_is_migrated_not_broken(tmp_path: Path) -> None:
    path = tmp_path / "service.db"
    old = sqlite3.connect(path)
    for statement in SQLITE[1]:
        old.execute(statement)
    body = '{"id": "j1", "created_at": 1.0, "audio_path": "a", "video_path": "v", '
    body += '"avatar_id": "a1", "audio_seconds": 1.0, "deadline_s": 30, '
    body += '"registered_avatar": true, "state": "running", "attempts": 1}'
    old.execute(
        "INSERT INTO jobs (id, state, avatar_id, body) VALUES ('j1', 'running', 'a1', ?)", (body,)
    )
    old.commit()
    old.close()

    store = await SqliteStore(path).open()
    job = await store.get_job("j1")
    stale = await store.stale_jobs(None)
    versions = await _schema_versions(store)
    await store.close()

    assert job is not None and job.state == RUNNING and job.attempts == 1
    assert [found.id for found in stale] == ["j1"], "a running row with no lease is expired"
    assert [version for version, _ in versions] == list(range(1, LATEST + 1))


async def test_an_unreachable_postgres_is_named_without_its_password() -> None:
    url = "postgresql://dh:s3cret-pw@127.0.0.1:1/jobs"

    with pytest.raises(StoreUnavailable) as raised:
        await PostgresStore(url).open()

    assert "PostgreSQL at 127.0.0.1:1/jobs is unreachable" in raised.value.message
    assert "s3cret-pw" not in str(raised.value)


async def _schema_versions(store: JobStore) -> list[tuple[int, float]]:
    if isinstance(store, SqliteStore):
        rows = await store._run(
            store._sql, "SELECT version, applied_at FROM schema_version ORDER BY version"
        )
    else:
        assert isinstance(store, PostgresStore)
        rows = await store._sql("SELECT version, applied_at FROM schema_version ORDER BY version")
    return [(int(version), float(at)) for version, at in rows]


async def test_an_exclusive_lock_has_one_holder_across_replicas(open_store: Opener) -> None:
    first, second = await open_store(), await open_store()
    try:
        async with first.exclusive("sweep") as first_holds:
            async with second.exclusive("sweep") as second_holds:
                assert (first_holds, second_holds) == (True, False)
            async with second.exclusive("another") as other_lock:
                assert other_lock
        async with second.exclusive("sweep") as after_release:
            assert after_release
    finally:
        await first.close()
        await second.close()


async def test_two_replicas_claiming_one_videos_preparation_at_once_get_it_once(
    open_store: Opener,
) -> None:
    first, second = await open_store(), await open_store()

    async def claim(store: JobStore, owner: str) -> list[bool]:
        return [await store.claim_preparation(f"v{i}", owner, lease_s=30) for i in range(20)]

    by_a, by_b = await asyncio.gather(claim(first, "a#1"), claim(second, "b#1"))
    again = await first.claim_preparation("v0", "a#1" if by_a[0] else "b#1", lease_s=30)
    await first.close()
    await second.close()

    assert [a != b for a, b in zip(by_a, by_b, strict=True)] == [True] * 20, (by_a, by_b)
    assert again, "the holder may claim its own lease again"


async def test_a_preparation_lease_is_renewed_by_its_holder_and_free_once_released_or_expired(
    store: JobStore,
) -> None:
    assert await store.claim_preparation("v1", "a#1", lease_s=30)
    assert await store.renew_preparation("v1", "a#1", lease_s=30)
    assert not await store.renew_preparation("v1", "b#1", lease_s=30)
    assert not await store.claim_preparation("v1", "b#1", lease_s=30)
    await store.release_preparation("v1", "b#1")  # not its lease: nothing happens
    assert not await store.claim_preparation("v1", "b#1", lease_s=30)
    await store.release_preparation("v1", "a#1")
    assert await store.claim_preparation("v1", "b#1", lease_s=0.01)  # expires at once
    await asyncio.sleep(0.05)  # let the short lease lapse (a duration, not a state wait)
    assert not await store.renew_preparation("v1", "c#1", lease_s=30)
    assert await store.claim_preparation("v1", "c#1", lease_s=30)
    # A restarted replica takes back its previous incarnation's lease at once.
    assert await store.claim_preparation("v1", "c#2", lease_s=30, previous="c#")
