"""The outcome recorder: the one place where a job's end becomes a state in the store.

It applies an outcome (orchestrator.jobs.outcomes) through the life-cycle table, saves it
only while this replica still holds the job's lease on the attempt it claimed (so a job
another replica took over is never overwritten, nor recorded twice), and then does what
follows a job's end: its files kept or removed, a one-off avatar's cache forgotten,
metrics, the webhook, and an event for the other replicas. An outcome that finds the
store away waits for it: a finished render is recorded when the store is back, never
rendered again for the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from orchestrator.errors import PipelineError
from orchestrator.jobs.admission import Admission
from orchestrator.jobs.lifecycle import JobState, StopReason, transition
from orchestrator.jobs.outcomes import (
    Cancelled,
    Failed,
    LeaseLost,
    Outcome,
    Requeue,
    RunningJob,
    Shutdown,
    Succeeded,
)
from orchestrator.jobs.store import (
    ENDED_EVENT,
    QUEUED_EVENT,
    JobError,
    JobRecord,
    JobStore,
    StoreUnavailable,
)
from orchestrator.jobs.webhook import WebhookSender
from orchestrator.metrics import ServiceMetrics
from orchestrator.settings import Settings
from orchestrator.storage import Storage

log = logging.getLogger(__name__)
CANCELLED_MESSAGE = "cancelled by the client"
# Recording a job's outcome while the store is away: tried again this often until the
# store is back (a finished render is never thrown away for an outage) or this replica
# stops (the job's lease then expires and another replica runs it again).
RECORD_RETRY_S = 1.0


class OutcomeRecorder:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        storage: Storage,
        metrics: ServiceMetrics,
        webhooks: WebhookSender,
        admission: Admission,
        owner: str,
        on_succeeded: Callable[[JobRecord], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.metrics = metrics
        self.webhooks = webhooks
        self.admission = admission
        self.owner = owner  # this replica's lease owner name
        # Awaited before a success is recorded (HeyGem's result file must exist by then);
        # a PipelineError from it fails the job instead.
        self.on_succeeded = on_succeeded
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """This replica stops: outcomes still waiting for the store are given up."""
        self._stopping.set()

    async def record(self, running: RunningJob, outcome: Outcome) -> None:
        """Applies the outcome of a render this replica ran."""
        job = running.job
        if isinstance(outcome, LeaseLost):
            log.warning("job %s: another replica holds it now; nothing recorded", job.id)
            return
        if isinstance(outcome, Shutdown):
            was = transition(job, JobState.QUEUED, StopReason.SHUTDOWN)
            try:  # once: at shutdown there is no time to wait for the store
                saved = await self.store.update_job(
                    job, was=was, owner=self.owner, attempt=running.attempt
                )
            except StoreUnavailable as exc:  # its lease expires and another replica runs it
                log.warning("job %s not queued again at shutdown: %s", job.id, exc.message)
                return
            if saved:
                await self.notify(QUEUED_EVENT)  # another replica may take it now
            return
        if isinstance(outcome, Succeeded):
            await self._succeed(running, outcome)
        elif isinstance(outcome, Failed):
            transition(job, JobState.FAILED, outcome.reason, outcome.error)
        elif isinstance(outcome, Cancelled):
            error = JobError(outcome.stage, CANCELLED_MESSAGE)
            transition(job, JobState.CANCELLED, StopReason.CANCELLED, error)
        elif isinstance(outcome, Requeue):
            last = job.attempts >= self.settings.max_attempts
            transition(
                job, JobState.FAILED if last else JobState.QUEUED, StopReason.OUTAGE, outcome.error
            )
        if job.state is not JobState.SUCCEEDED:
            job.stage = running.stage
            if running.progress is not None:
                job.frames_done = running.progress.frames_done
                job.frames_total = running.progress.frames_total
        if not await self._save(job, running.attempt):
            return
        if job.state is JobState.QUEUED:
            assert job.error is not None
            log.warning(
                "job %s: %s: %s (attempt %d of %d); queued again",
                job.id,
                job.error.stage,
                job.error.message,
                job.attempts,
                self.settings.max_attempts,
            )
            await self.notify(QUEUED_EVENT)
            return
        seconds = time.monotonic() - running.started
        if job.state is JobState.SUCCEEDED:
            self.admission.job_took(seconds)
        log.info("job %s %s after %.2f s", job.id, job.state, seconds)
        await self.ended(job, seconds)

    async def _succeed(self, running: RunningJob, outcome: Succeeded) -> None:
        job = running.job
        job.stage_seconds = dict(outcome.stage_seconds)
        job.frames_done = job.frames_total = outcome.result.frames
        job.frames_per_second = outcome.frames_per_second
        job.result = outcome.result
        if self.on_succeeded is not None:
            try:
                await self.on_succeeded(job)
            except PipelineError as exc:
                job.result = None
                transition(job, JobState.FAILED, StopReason.FAILED, JobError.from_exception(exc))
                return
        transition(job, JobState.SUCCEEDED, StopReason.COMPLETED)
        job.stage = "done"

    async def _save(self, job: JobRecord, attempt: int) -> bool:
        """Saves the outcome of a job this replica holds on `attempt`; False if another
        replica has it now. While the store is away it is tried again until the store is
        back: the renders' work is not thrown away for an outage."""
        unsure = False  # a try that timed out may have been written all the same
        while True:
            try:
                saved = await self.store.update_job(
                    job, was=JobState.RUNNING, owner=self.owner, attempt=attempt
                )
                if not saved and unsure:
                    saved = await self._written(job)
            except StoreUnavailable as exc:
                if self._stopping.is_set():
                    log.error("job %s: outcome not recorded (%s); it runs again", job.id, exc)
                    return False
                if not unsure:
                    log.warning("job %s: outcome waits for the store: %s", job.id, exc.message)
                unsure = True
                # A retry pause while the store is away, not a wait for state; a stop
                # of this replica ends it early.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RECORD_RETRY_S):
                        await self._stopping.wait()
                continue
            if not saved:
                log.warning("job %s: its lease was lost before its outcome was recorded", job.id)
            return saved

    async def _written(self, job: JobRecord) -> bool:
        """Whether the store holds this very outcome (a write whose answer was lost)."""
        stored = await self.store.get_job(job.id)
        return stored is not None and (
            stored.state,
            stored.attempts,
            stored.started_at,
            stored.finished_at,
        ) == (job.state, job.attempts, job.started_at, job.finished_at)

    async def ended(self, job: JobRecord, seconds: float) -> None:
        """What follows a job's final state, wherever it was recorded (here, by a cancel
        of a queued job, or by the lease sweep for a replica that died)."""
        # Inputs go once the job has ended; only a result is kept.
        if job.state is JobState.SUCCEEDED:
            await self.storage.remove_job_inputs(job.id)
        else:
            await self.storage.remove_job(job.id)
        await self._forget_one_off_avatar(job)
        self.metrics.job_finished(job.state, seconds, job.stage_seconds)
        self.webhooks.send(job)
        await self.notify(f"{ENDED_EVENT}{job.id}")

    async def notify(self, event: str) -> None:
        try:
            await self.store.notify(event)
        except StoreUnavailable as exc:  # the others find out at their next sweep
            log.warning("could not tell the other replicas (%s): %s", event, exc.message)

    async def _forget_one_off_avatar(self, job: JobRecord) -> None:
        """A one-off video's avatar cache goes with its job unless someone else needs it."""
        if job.registered_avatar:
            return
        # Under the admission lock: no job with the same video can be queued meanwhile.
        async with self.admission.lock:
            if await self.store.get_avatar(job.avatar_id) is not None:
                return
            if await self.store.avatar_in_use(job.avatar_id):
                return
            await self.storage.remove_avatar_cache(job.avatar_id)
