"""Every move of a job's life cycle, through the real scheduler (dispatcher, runner,
recorder, leases) on an in-memory store and an engine the test drives (tests.fakes):
what a client would see in the job's record, its webhook and its files.

The life-cycle table itself: every move it lists is made, every other is refused with a
typed error and leaves the record alone.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from orchestrator.api.documents import job_document
from orchestrator.dependencies import Dependencies
from orchestrator.errors import SERVER, BadInput, Conflict, PipelineError, TritonUnavailable
from orchestrator.jobs.admission import Admission
from orchestrator.jobs.avatars import Avatars
from orchestrator.jobs.lifecycle import (
    TRANSITIONS,
    IllegalTransition,
    JobState,
    StopReason,
    transition,
)
from orchestrator.jobs.outcomes import Outcome, RunningJob
from orchestrator.jobs.runner import stopped_outcome
from orchestrator.jobs.scheduler import Scheduler
from orchestrator.jobs.store import JobError, JobRecord, JobResult, JobStore, StoreUnavailable
from orchestrator.jobs.webhook import WebhookSender
from orchestrator.metrics import ServiceMetrics
from orchestrator.pipeline.runner import Engine
from orchestrator.settings import Settings
from orchestrator.storage import Storage, StorageUnavailable
from tests.fakes import (
    WAIT_S,
    FakeAdmission,
    FakeAvatars,
    FakeDependencies,
    FakeEngine,
    FakeMetrics,
    FakeStorage,
    FakeWebhooks,
    MemoryStore,
    new_job,
)

OTHER_REPLICA = "elsewhere#1"


@dataclass
class Service:
    scheduler: Scheduler
    store: MemoryStore
    engine: FakeEngine
    storage: FakeStorage
    dependencies: FakeDependencies
    webhooks: FakeWebhooks
    metrics: FakeMetrics
    admission: FakeAdmission

    async def submit(self, job: JobRecord) -> None:
        await self.admission.submit(job)

    async def state(self, job_id: str = "j1") -> JobState:
        """The job's state in the store, which must hold it."""
        job = await self.store.get_job(job_id)
        assert job is not None, job_id
        return job.state

    async def running(self, job_id: str = "j1") -> RunningJob:
        """The job's entry once its render has started here."""
        async with asyncio.timeout(WAIT_S):
            await self.engine.started.wait()
        return self.scheduler._running[job_id]


async def _service(tmp_path: Path, ready: bool = True, **settings: Any) -> Service:
    store = MemoryStore()
    engine, storage = FakeEngine(), FakeStorage(tmp_path)
    dependencies, webhooks, metrics = FakeDependencies(ready), FakeWebhooks(), FakeMetrics()
    admission = FakeAdmission(store)
    scheduler = Scheduler(
        Settings(
            data_dir=tmp_path,
            lease_s=120.0,
            lease_heartbeat_s=60.0,  # the tests renew and sweep by hand
            **settings,
        ),
        # The fakes (tests.fakes) have only what the scheduler calls, not the whole of
        # the services its signature names: they stand in by duck typing.
        cast(Engine, engine),
        cast(JobStore, store),
        cast(Storage, storage),
        cast(Avatars, FakeAvatars()),
        cast(ServiceMetrics, metrics),
        cast(WebhookSender, webhooks),
        cast(Admission, admission),
        cast(Dependencies, dependencies),
    )
    await scheduler.start()
    return Service(scheduler, store, engine, storage, dependencies, webhooks, metrics, admission)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    started = await _service(tmp_path, max_attempts=2)
    yield started
    await started.scheduler.stop()


async def _ended(entry: RunningJob) -> None:
    assert entry.task is not None
    async with asyncio.timeout(WAIT_S):
        await asyncio.wait({entry.task})


# the table


def test_every_move_outside_the_table_is_refused_and_changes_nothing() -> None:
    reasons: list[StopReason | None] = [None, *StopReason]
    for was in JobState:
        for to in JobState:
            for reason in reasons:
                job = new_job(state=was, attempts=1)
                before = copy.deepcopy(job)
                if reason in TRANSITIONS.get((was, to), frozenset()):
                    assert transition(job, to, reason, JobError("s", "m")) is was
                    assert job.state is to
                    continue
                with pytest.raises(IllegalTransition) as refused:
                    transition(job, to, reason)
                assert job == before
                assert isinstance(refused.value, Conflict) and refused.value.http_status == 409


def test_a_job_never_fails_or_is_cancelled_without_a_reason() -> None:
    job = new_job(state=JobState.RUNNING)
    with pytest.raises(ValueError, match="needs an error"):
        transition(job, JobState.FAILED, StopReason.FAILED)
    assert job.state is JobState.RUNNING


def test_a_final_state_is_final() -> None:
    for final in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
        assert not [move for move in TRANSITIONS if move[0] is final]


def test_a_graceful_stop_gives_the_attempt_back_and_an_outage_keeps_its_reason() -> None:
    job = new_job(state=JobState.RUNNING, attempts=2, started_at=1.0)
    transition(job, JobState.QUEUED, StopReason.SHUTDOWN)
    assert (job.state, job.attempts, job.started_at) == (JobState.QUEUED, 1, None)
    job = new_job(state=JobState.RUNNING, attempts=2)
    outage = JobError("infer", "Triton is gone", retryable=True)
    transition(job, JobState.QUEUED, StopReason.OUTAGE, outage)
    assert (job.attempts, job.error) == (2, outage)


def test_a_job_error_knows_whether_a_retry_can_help() -> None:
    gone = JobError.from_exception(TritonUnavailable(SERVER, "connection refused"))
    assert (gone.stage, gone.retryable) == ("infer", True)
    assert JobError.from_exception(BadInput("decode", "no audio")).retryable is False


def test_the_job_document_and_webhook_say_whether_a_retry_can_help() -> None:
    job = new_job(state=JobState.FAILED, error=JobError("infer", "Triton is gone", True))
    document = job_document(job).model_dump(mode="json")
    assert document["state"] == "failed"
    assert document["error"] == {"stage": "infer", "message": "Triton is gone", "retryable": True}


# the scheduler, move by move


async def test_a_job_runs_to_success(service: Service) -> None:
    await service.submit(new_job())
    entry = await service.running()
    assert (await service.state()) is JobState.RUNNING
    service.engine.finish()
    await _ended(entry)

    job = await service.store.wait_state("j1", JobState.SUCCEEDED)
    assert job.result == JobResult(10, 25.0, 64, 48, 0.4, 0, 0.2, 100)
    assert (job.error, job.stage, job.attempts, job.frames_done) == (None, "done", 1, 10)
    assert job.lease_owner is None and job.finished_at is not None
    assert ("inputs", "j1") in service.storage.removed  # only the result is kept
    assert [sent.state for sent in service.webhooks.sent] == [JobState.SUCCEEDED]
    assert service.metrics.finished == ["succeeded"] and service.metrics.frames == 3
    assert service.scheduler.running_count() == 0


async def test_cancel_while_queued(tmp_path: Path) -> None:
    service = await _service(tmp_path, ready=False)  # nothing starts: the job stays queued
    try:
        await service.submit(new_job())
        job = await service.scheduler.cancel("j1")
        assert job.state is JobState.CANCELLED
        assert job.error == JobError("queued", "cancelled by the client")
        assert (await service.state()) is JobState.CANCELLED
        assert ("job", "j1") in service.storage.removed
        assert ("avatar", "avatar-j1") in service.storage.removed  # a one-off video's cache
        assert [sent.state for sent in service.webhooks.sent] == [JobState.CANCELLED]
        service.dependencies.back()  # a cancelled job is never claimed
        assert await service.store.claim_job("x#1", 1.0) is None
    finally:
        await service.scheduler.stop()


async def test_cancel_while_running_stops_the_render(service: Service) -> None:
    await service.submit(new_job())
    await service.running()
    job = await service.scheduler.cancel("j1")
    assert job.state is JobState.CANCELLED
    assert job.error == JobError("infer", "cancelled by the client")
    assert service.engine.renders[0].cancelled
    assert (job.frames_done, job.frames_total, job.lease_owner) == (3, 10, None)
    assert service.metrics.finished == ["cancelled"]


async def test_cancel_after_the_job_ended_is_a_conflict(service: Service) -> None:
    await service.submit(new_job())
    entry = await service.running()
    service.engine.finish()
    await _ended(entry)
    with pytest.raises(Conflict) as refused:
        await service.scheduler.cancel("j1")
    assert refused.value.http_status == 409
    assert (await service.state()) is JobState.SUCCEEDED


async def test_cancel_asked_on_another_replica_reaches_the_render(service: Service) -> None:
    """The heartbeat reads the row's cancel flag (the event may have been missed)."""
    await service.submit(new_job())
    entry = await service.running()
    assert await service.store.request_cancel("j1")
    await service.scheduler.leases.renew()
    await _ended(entry)
    assert (await service.state()) is JobState.CANCELLED


async def test_a_lost_lease_stops_the_render_and_records_nothing(service: Service) -> None:
    await service.submit(new_job())
    entry = await service.running()
    service.store.take_over("j1", OTHER_REPLICA)
    await service.scheduler.leases.renew()  # the heartbeat finds the lease is not ours
    await _ended(entry)

    job = await service.store.get_job("j1")
    assert job is not None
    assert (job.state, job.lease_owner, job.error) == (JobState.RUNNING, OTHER_REPLICA, None)
    assert service.engine.renders[0].cancelled
    assert service.webhooks.sent == [] and service.metrics.finished == []
    assert service.storage.removed == []


@pytest.mark.parametrize(
    "outage",
    [
        TritonUnavailable(SERVER, "connection refused"),
        StorageUnavailable("storage", "the bucket did not answer"),
    ],
    ids=["triton", "storage"],
)
async def test_an_outage_mid_render_queues_the_job_again_then_fails_it_on_the_last_attempt(
    service: Service, outage: PipelineError
) -> None:
    await service.submit(new_job())
    entry = await service.running()
    service.engine.finish(outage)
    await _ended(entry)

    job = await service.store.wait_state("j1", JobState.QUEUED)
    assert job.attempts == 1  # counted: the next start is attempt 2 of 2
    assert job.error == JobError(outage.stage, outage.message, retryable=True)
    assert (job.started_at, job.lease_owner, job.stage) == (None, None, "infer")
    assert service.dependencies.reported == [outage]  # nothing else starts meanwhile
    assert service.scheduler.running_count() == 0 and service.webhooks.sent == []

    service.engine.again()
    service.dependencies.back()  # the dispatcher claims it again
    entry = await service.running()
    service.engine.finish(outage)
    await _ended(entry)
    job = await service.store.wait_state("j1", JobState.FAILED)
    assert job.attempts == 2 and job.error == JobError(outage.stage, outage.message, True)
    assert [sent.state for sent in service.webhooks.sent] == [JobState.FAILED]


async def test_a_failure_ends_the_job_with_its_stage_and_message(service: Service) -> None:
    await service.submit(new_job())
    entry = await service.running()
    service.engine.finish(BadInput("decode", "the audio has no samples"))
    await _ended(entry)
    job = await service.store.wait_state("j1", JobState.FAILED)
    assert job.error == JobError("decode", "the audio has no samples", retryable=False)
    assert job.attempts == 1 and ("job", "j1") in service.storage.removed


async def test_an_untyped_fault_still_ends_the_job_with_a_reason(service: Service) -> None:
    await service.submit(new_job())
    entry = await service.running()
    service.engine.finish(ExceptionGroup("render", [ValueError("bad frame 7")]))
    await _ended(entry)
    job = await service.store.wait_state("j1", JobState.FAILED)
    assert job.error == JobError("infer", "ValueError: bad frame 7")


async def test_a_job_past_its_deadline_fails_as_such(service: Service) -> None:
    await service.submit(new_job(deadline_s=0.05))  # the render never finishes by itself
    entry = await service.running()
    await _ended(entry)
    job = await service.store.wait_state("j1", JobState.FAILED)
    assert job.error is not None and job.error.stage == "infer"
    assert "ran past its deadline of 0.05 s" in job.error.message
    assert service.engine.renders[0].cancelled


async def test_a_timeout_that_is_not_the_deadline_is_a_failure_of_its_own(
    service: Service,
) -> None:
    await service.submit(new_job())
    entry = await service.running()
    service.engine.finish(TimeoutError("the encoder did not answer"))
    await _ended(entry)
    job = await service.store.wait_state("j1", JobState.FAILED)
    assert job.error is not None
    assert "deadline of" not in job.error.message
    assert job.error.message == (
        "timed out before the job's deadline: TimeoutError: the encoder did not answer"
    )


async def test_shutdown_queues_the_job_again_without_counting_the_attempt(
    service: Service,
) -> None:
    await service.submit(new_job())
    await service.running()
    await service.scheduler.stop()
    job = await service.store.wait_state("j1", JobState.QUEUED)
    assert (job.attempts, job.error, job.lease_owner, job.started_at) == (0, None, None, None)
    assert service.engine.renders[0].cancelled and service.webhooks.sent == []
    assert "queued" in service.store.events  # another replica may take it now


async def test_a_cancellation_nobody_asked_for_propagates_and_the_job_goes_back(
    service: Service,
) -> None:
    await service.submit(new_job())
    entry = await service.running()
    assert entry.task is not None
    service.dependencies.ready = False  # so that nothing claims it again at once
    entry.task.cancel()  # not through entry.stop(): e.g. the event loop closing
    await asyncio.wait({entry.task}, timeout=WAIT_S)
    assert entry.task.cancelled()
    job = await service.store.wait_state("j1", JobState.QUEUED)
    assert job.attempts == 0


async def test_a_stop_that_was_asked_for_is_absorbed_with_uncancel() -> None:
    entry = RunningJob(new_job())
    # A job's task returns nothing (RunningJob.task is a Task[None]); this one keeps the
    # outcome it absorbed here instead.
    outcomes: list[Outcome] = []

    async def render() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopped = stopped_outcome(entry)
            if stopped is None:
                raise
            outcomes.append(stopped)

    entry.task = asyncio.create_task(render())
    await asyncio.sleep(0)  # let it reach its wait
    assert entry.stop(StopReason.CANCELLED)
    assert not entry.stop(StopReason.SHUTDOWN)  # the first request wins
    await entry.task
    assert [type(outcome).__name__ for outcome in outcomes] == ["Cancelled"]
    assert not entry.task.cancelled() and entry.task.cancelling() == 0


async def test_a_failing_result_hook_fails_the_job(tmp_path: Path) -> None:
    service = await _service(tmp_path)

    async def place_result(job: JobRecord) -> None:
        raise PipelineError("heygem", "the result folder is read-only")

    service.scheduler.recorder.on_succeeded = place_result
    try:
        await service.submit(new_job())
        entry = await service.running()
        service.engine.finish()
        await _ended(entry)
        job = await service.store.wait_state("j1", JobState.FAILED)
        assert job.error == JobError("heygem", "the result folder is read-only")
        assert job.result is None
    finally:
        await service.scheduler.stop()


# the lease sweep: a replica that died


async def test_a_dead_replicas_job_is_queued_again_then_fails_as_interrupted(
    service: Service,
) -> None:
    await service.store.add_job(new_job())  # not announced: no replica here claims it
    claimed = await service.store.claim_job(OTHER_REPLICA, 60.0)
    assert claimed is not None
    service.store.expire_lease("j1", OTHER_REPLICA)
    service.dependencies.ready = False  # keep it queued once swept
    await service.scheduler.leases.sweep()
    job = await service.store.wait_state("j1", JobState.QUEUED)
    assert (job.attempts, job.lease_owner) == (1, None)

    await service.store.claim_job(OTHER_REPLICA, 60.0)
    service.store.expire_lease("j1", OTHER_REPLICA)
    await service.scheduler.leases.sweep()
    job = await service.store.wait_state("j1", JobState.FAILED)
    assert job.error is not None and job.error.message.startswith("interrupted:")
    assert [sent.state for sent in service.webhooks.sent] == [JobState.FAILED]


async def test_a_dead_replicas_job_with_a_cancel_request_ends_cancelled(
    service: Service,
) -> None:
    await service.store.add_job(new_job())
    await service.store.claim_job(OTHER_REPLICA, 60.0)
    await service.store.request_cancel("j1")
    service.store.expire_lease("j1", OTHER_REPLICA)
    await service.scheduler.leases.sweep()
    job = await service.store.wait_state("j1", JobState.CANCELLED)
    assert job.error == JobError("decode", "cancelled by the client")


# dispatch


async def test_no_more_jobs_start_than_there_are_slots(tmp_path: Path) -> None:
    service = await _service(tmp_path, max_running_jobs=1)
    try:
        await service.submit(new_job("j1"))
        await service.submit(new_job("j2"))
        entry = await service.running("j1")
        assert (await service.state("j2")) is JobState.QUEUED
        service.engine.finish()
        await _ended(entry)
        await service.store.wait_state("j2", JobState.SUCCEEDED)  # its slot freed
    finally:
        await service.scheduler.stop()


async def test_nothing_starts_until_the_dependencies_are_ready(tmp_path: Path) -> None:
    service = await _service(tmp_path, ready=False)
    try:
        await service.submit(new_job())
        await asyncio.sleep(0)  # the dispatcher has looked (and started nothing)
        assert (await service.state()) is JobState.QUEUED
        service.dependencies.back()
        await service.store.wait_state("j1", JobState.RUNNING)
    finally:
        await service.scheduler.stop()


# the job store going away


async def test_a_render_that_ends_while_the_store_is_down_is_recorded_when_it_is_back(
    service: Service,
) -> None:
    await service.submit(new_job())
    entry = await service.running()
    service.store.go_down()
    with pytest.raises(StoreUnavailable):  # the heartbeat fails ...
        await service.scheduler.leases.renew()
    assert entry.task is not None and not entry.task.done()  # ... and the render goes on
    assert entry.stop_reason is None

    service.engine.finish()
    await service.store.refused()  # the recorder found the store away
    assert service.store.jobs["j1"].state is JobState.RUNNING
    service.store.come_back()
    await _ended(entry)

    job = await service.store.wait_state("j1", JobState.SUCCEEDED)
    assert (job.attempts, job.lease_owner, job.error) == (1, None, None)
    assert len(service.engine.renders) == 1, "recorded, not rendered again"
    assert [sent.state for sent in service.webhooks.sent] == [JobState.SUCCEEDED]


@pytest.mark.parametrize("claimer", ["other replica", "this replica"])
async def test_a_cut_off_replica_writes_nothing_once_the_job_was_claimed_again(
    service: Service, claimer: str
) -> None:
    await service.submit(new_job())
    entry = await service.running()
    service.store.go_down()
    # Cut off past its lease: the job is swept and claimed again (a new attempt), by
    # another replica or by this one (same owner: only the attempt tells them apart).
    owner = OTHER_REPLICA if claimer == "other replica" else service.scheduler.replica
    service.store.claim_again("j1", owner)
    service.engine.finish()
    await service.store.refused()
    service.store.come_back()
    await _ended(entry)

    job = await service.store.get_job("j1")
    assert job is not None
    assert (job.state, job.attempts, job.lease_owner) == (JobState.RUNNING, 2, owner)
    assert (job.result, job.error, job.finished_at) == (None, None, None)
    assert service.webhooks.sent == [] and service.metrics.finished == []
    assert service.storage.removed == []
    # Its heartbeat and stage writes are refused too.
    assert await service.store.heartbeat("j1", owner, 60.0, None, entry.attempt) is None
    await service.store.set_job_stage("j1", "encode", owner, entry.attempt)
    assert service.store.jobs["j1"].stage == job.stage


async def test_a_heartbeat_for_an_attempt_claimed_again_stops_the_render(
    service: Service,
) -> None:
    await service.submit(new_job())
    entry = await service.running()
    service.store.claim_again("j1", service.scheduler.replica)  # same owner, new attempt
    await service.scheduler.leases.renew()
    await _ended(entry)

    assert service.engine.renders[0].cancelled
    job = await service.store.get_job("j1")
    assert job is not None and (job.state, job.attempts) == (JobState.RUNNING, 2)
    assert service.webhooks.sent == []


async def test_shutdown_gives_up_an_outcome_waiting_for_the_store(tmp_path: Path) -> None:
    service = await _service(tmp_path)
    await service.submit(new_job())
    entry = await service.running()
    service.store.go_down()
    service.engine.finish()
    await service.store.refused()
    async with asyncio.timeout(WAIT_S):
        await service.scheduler.stop()
    assert entry.task is not None and entry.task.done()
    assert service.store.jobs["j1"].state is JobState.RUNNING  # its lease expires; runs again


async def test_a_job_cancelled_while_the_store_disk_is_full_ends_cancelled_once_freed(
    service: Service,
) -> None:
    await service.submit(new_job())
    entry = await service.running()
    service.store.go_down(full=True)
    stop = entry.stop(StopReason.CANCELLED)  # what DELETE does on the job's replica
    await service.store.refused()  # its outcome waits: nothing can be written
    assert stop and service.store.jobs["j1"].state is JobState.RUNNING
    assert service.store.jobs["j1"].lease_owner == service.scheduler.replica  # a live owner
    service.store.come_back()  # space freed
    await _ended(entry)

    job = await service.store.wait_state("j1", JobState.CANCELLED)
    assert job.error == JobError("infer", "cancelled by the client")
    assert len(service.engine.renders) == 1 and service.engine.renders[0].cancelled
