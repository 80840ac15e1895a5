"""Fencing on both engines: every write about a running job (heartbeat, stage, outcome)
lands only for the lease owner on the attempt it claimed, so a replica that was cut off
while the job was claimed again (even by the same owner) writes nothing."""

from __future__ import annotations

from orchestrator.jobs.lifecycle import JobState
from orchestrator.jobs.store import RUNNING, SUCCEEDED, JobProgress, JobStore
from tests.engines import postgres  # noqa: F401 (registers the fixture)
from tests.unit.test_store import _job, open_store, store  # noqa: F401 (the fixtures)


async def test_a_write_for_an_earlier_attempt_is_refused(store: JobStore) -> None:  # noqa: F811
    await store.add_job(_job("j1"))
    first = await store.claim_job("a#1", lease_s=60)
    assert first is not None and first.attempts == 1
    # Swept back to the queue and claimed again by the same owner: attempt 2.
    queued = await store.get_job("j1")
    assert queued is not None
    queued.state = JobState.QUEUED
    assert await store.update_job(queued, was=RUNNING, owner="a#1", attempt=1)
    second = await store.claim_job("a#1", lease_s=60)
    assert second is not None and second.attempts == 2

    stale_beat = await store.heartbeat("j1", "a#1", 60, JobProgress("encode", 9, 9, 1.0), 1)
    await store.set_job_stage("j1", "encode", "a#1", 1)
    first.state = SUCCEEDED
    stale_outcome = await store.update_job(first, was=RUNNING, owner="a#1", attempt=1)
    current_beat = await store.heartbeat("j1", "a#1", 60, None, 2)
    await store.set_job_stage("j1", "infer", "a#1", 2)

    assert (stale_beat, stale_outcome, current_beat) == (None, False, False)
    stored = await store.get_job("j1")
    assert stored is not None
    assert (stored.state, stored.attempts, stored.stage) == (RUNNING, 2, "infer")
    second.state = SUCCEEDED
    assert await store.update_job(second, was=RUNNING, owner="a#1", attempt=2)
