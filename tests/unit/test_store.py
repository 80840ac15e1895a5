"""The SQLite job store: records round-trip, survive a reopen, page newest first."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from orchestrator.jobs.store import (
    QUEUED,
    RUNNING,
    SUCCEEDED,
    AvatarRecord,
    JobRecord,
    SqliteStore,
    is_unique_violation,
)


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


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    opened = await SqliteStore(tmp_path / "jobs.db").open()
    yield opened
    await opened.close()


async def test_a_job_round_trips_and_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    first = await SqliteStore(path).open()
    job = await first.add_job(_job("j1"))
    job.state, job.stage_seconds, job.error = (
        RUNNING,
        {"infer": 1.25},
        {"stage": "x", "message": "y"},
    )
    await first.save_job(job)
    await first.close()

    second = await SqliteStore(path).open()
    loaded = await second.get_job("j1")
    await second.close()

    assert loaded == job
    assert loaded is not None and loaded.seq == job.seq > 0


async def test_listing_is_newest_first_filtered_and_paged(store: SqliteStore) -> None:
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


async def test_a_client_code_is_unique(store: SqliteStore) -> None:
    await store.add_job(_job("j1", code="abc"))

    with pytest.raises(sqlite3.IntegrityError) as raised:
        await store.add_job(_job("j2", code="abc"))

    assert is_unique_violation(raised.value)
    found = await store.job_by_code("abc")
    assert found is not None and found.id == "j1"


async def test_an_avatar_is_in_use_only_while_a_job_is_active(store: SqliteStore) -> None:
    await store.add_avatar(AvatarRecord(id="a1", created_at=0.0, source_path="s", source_name="n"))
    job = await store.add_job(_job("j1", avatar_id="a1"))

    assert await store.avatar_in_use("a1")
    job.state = SUCCEEDED
    await store.save_job(job)
    assert not await store.avatar_in_use("a1")
    await store.delete_avatar("a1")
    assert await store.get_avatar("a1") is None
