"""The scheduler: at most N jobs at once per replica, cancellation, and who does what.

A thin facade over the parts of running jobs, each its own module:
- orchestrator.jobs.dispatcher claims queued jobs while there are free slots and every
  dependency (orchestrator.dependencies) is up;
- orchestrator.jobs.runner renders a claimed job under its deadline and returns an
  outcome (orchestrator.jobs.outcomes) instead of changing the job;
- orchestrator.jobs.recorder applies that outcome to the store through the life-cycle
  table (orchestrator.jobs.lifecycle), owner-checked, then webhooks, metrics, files;
- orchestrator.jobs.leases renews this replica's leases and settles the jobs of
  replicas that died (queued again with the attempt counted, or failed as interrupted).

Admission (orchestrator.jobs.admission) queues jobs and tells the scheduler. A graceful
shutdown puts running jobs back in the queue without counting the attempt.

Cancellation reaches the replica that runs the job: DELETE flags the row and sends an
event; that replica stops the job, and the DELETE answers once the row says so (or after
a bounded wait). A queued job is cancelled in the store directly.

Outages: no job starts while a dependency is down; a job whose Triton or storage went
away mid-render goes back to the queue with the attempt counted, and runs again when it
is back (past `max_attempts` it fails with the outage as its reason).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from orchestrator.dependencies import Dependencies
from orchestrator.errors import Conflict, NotFound
from orchestrator.jobs.admission import Admission
from orchestrator.jobs.avatars import Avatars
from orchestrator.jobs.dispatcher import Dispatcher
from orchestrator.jobs.leases import Leases
from orchestrator.jobs.lifecycle import TERMINAL_STATES, JobState, StopReason, transition
from orchestrator.jobs.outcomes import RunningJob, Shutdown
from orchestrator.jobs.recorder import CANCELLED_MESSAGE, OutcomeRecorder
from orchestrator.jobs.runner import JobRunner, stopped_outcome
from orchestrator.jobs.store import (
    CANCEL_EVENT,
    ENDED_EVENT,
    QUEUED_EVENT,
    JobError,
    JobProgress,
    JobRecord,
    JobStore,
)
from orchestrator.jobs.webhook import WebhookSender
from orchestrator.logs import current_job
from orchestrator.metrics import ServiceMetrics
from orchestrator.pipeline.runner import Engine, Progress
from orchestrator.settings import Settings
from orchestrator.storage import Storage

log = logging.getLogger(__name__)
# How long DELETE waits for a running job to wind down; the pipeline stops well within it.
CANCEL_WAIT_S = 5.0


class Scheduler:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        store: JobStore,
        storage: Storage,
        avatars: Avatars,
        metrics: ServiceMetrics,
        webhooks: WebhookSender,
        admission: Admission,
        dependencies: Dependencies,
        on_succeeded: Callable[[JobRecord], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.webhooks = webhooks
        admission.on_queued(self._queued)
        self._running: dict[str, RunningJob] = {}
        self._ended: dict[str, asyncio.Event] = {}  # DELETEs waiting on another replica
        self._listening = False
        self.leases = Leases(
            settings,
            store,
            running=self._progress_of_running,
            on_lost=lambda job_id: self._stop_job(job_id, StopReason.LEASE_LOST),
            on_cancel=lambda job_id: self._stop_job(job_id, StopReason.CANCELLED),
            on_settled=self._settled_elsewhere,
            on_tick=self._wake,
        )
        self.runner = JobRunner(settings, engine, store, storage, avatars, metrics, dependencies)
        self.recorder = OutcomeRecorder(
            settings, store, storage, metrics, webhooks, admission, self.replica, on_succeeded
        )
        self.dispatcher = Dispatcher(
            settings, store, dependencies, self.replica, self.running_count, self._launch
        )

    @property
    def replica(self) -> str:
        """This replica's lease owner name (the jobs' "replica")."""
        return self.leases.owner

    # life cycle

    def listen(self) -> None:
        """Hears every replica's events (once, however often asked): a replica that only
        answers HTTP learns that the worker running a job it cancelled has ended it."""
        if not self._listening:
            self._listening = True
            self.store.subscribe(self._on_event)

    async def start(self) -> None:
        self.listen()
        await self.leases.start()
        for state in TERMINAL_STATES:
            for job in await self.store.jobs_in((state,)):
                if job.webhook_url and job.webhook is None:
                    self.webhooks.send(job)
        self.dispatcher.start()

    async def stop(self) -> None:
        await self.dispatcher.stop()
        self.recorder.stop()  # an outcome waiting for the store is given up: it runs again
        running = list(self._running.values())
        for entry in running:
            entry.stop(StopReason.SHUTDOWN)
        await asyncio.gather(
            *(entry.task for entry in running if entry.task), return_exceptions=True
        )
        await self.leases.stop()

    def _wake(self) -> None:
        self.dispatcher.wake()

    async def _queued(self, _: JobRecord) -> None:
        """A job was admitted here: this replica may run it, and so may the others."""
        self._wake()
        await self.recorder.notify(QUEUED_EVENT)

    def _on_event(self, event: str) -> None:
        """An event from any replica (through the store)."""
        if event == QUEUED_EVENT:
            self._wake()
        elif event.startswith(CANCEL_EVENT):
            self._stop_job(event.removeprefix(CANCEL_EVENT), StopReason.CANCELLED)
        elif event.startswith(ENDED_EVENT):
            waiter = self._ended.get(event.removeprefix(ENDED_EVENT))
            if waiter is not None:
                waiter.set()
            self._wake()  # a slot may be free on that replica's side of the count

    # queries

    def live_progress(self, job_id: str) -> Progress | None:
        entry = self._running.get(job_id)
        return entry.progress if entry else None

    def running_count(self) -> int:
        return len(self._running)

    def _progress_of_running(self) -> dict[str, tuple[int, JobProgress | None]]:
        """The jobs whose leases the heartbeat renews (those still rendering), with the
        attempt each was claimed for."""
        return {
            job_id: (
                entry.attempt,
                None
                if entry.progress is None
                else JobProgress(
                    entry.progress.stage,
                    entry.progress.frames_done,
                    entry.progress.frames_total,
                    round(entry.progress.frames_per_second, 2),
                ),
            )
            for job_id, entry in self._running.items()
            if entry.outcome is None
        }

    # running

    def _launch(self, job: JobRecord) -> None:
        entry = RunningJob(job)
        self._running[job.id] = entry
        entry.task = asyncio.create_task(self._run(entry), name=f"job-{job.id}")

    async def _run(self, entry: RunningJob) -> None:
        job = entry.job
        current_job.set(job.id)
        try:
            log.info("job %s started (attempt %d) on %s", job.id, job.attempts, self.replica)
            try:
                outcome = await self.runner.render(entry)
            except asyncio.CancelledError:
                # A stop that landed after the render's own handling (or one not asked for).
                stopped = stopped_outcome(entry)
                if stopped is None:
                    # Not ours (the loop is closing): the job goes back to the queue.
                    entry.outcome = Shutdown()
                    await asyncio.shield(self.recorder.record(entry, entry.outcome))
                    raise
                outcome = stopped
            entry.outcome = outcome
            # Recording the outcome must not be cut in half by a late cancel.
            await asyncio.shield(self.recorder.record(entry, outcome))
        finally:
            if self._running.get(job.id) is entry:  # not a later attempt of the same job
                del self._running[job.id]
            self._wake()

    # cancellation

    def _stop_job(self, job_id: str, reason: StopReason) -> None:
        entry = self._running.get(job_id)
        if entry is not None:
            entry.stop(reason)

    async def cancel(self, job_id: str) -> JobRecord:
        """Cancels a queued or running job; Conflict if it has already ended."""
        job = await self.store.get_job(job_id)
        if job is None:
            raise NotFound("jobs", f"no job with id '{job_id}'")
        if job.state is JobState.QUEUED:
            error = JobError("queued", CANCELLED_MESSAGE)
            was = transition(job, JobState.CANCELLED, StopReason.CANCELLED, error)
            # Only if still queued: a replica may claim it at the same moment.
            if await self.store.update_job(job, was=was):
                await self.recorder.ended(job, 0.0)
                return job
            job = await self.store.get_job(job_id) or job  # claimed meanwhile: running now
        entry = self._running.get(job_id)
        if entry is not None and entry.task is not None:
            entry.stop(StopReason.CANCELLED)
            await asyncio.wait({entry.task}, timeout=CANCEL_WAIT_S)
        elif job.state is JobState.RUNNING:
            await self._cancel_elsewhere(job_id)
        elif job.state is not JobState.QUEUED:
            raise Conflict("jobs", f"job '{job_id}' has already {job.state}; nothing to cancel")
        latest = await self.store.get_job(job_id)
        if latest is None:
            raise NotFound("jobs", f"no job with id '{job_id}'")
        return latest

    async def _cancel_elsewhere(self, job_id: str) -> None:
        """Flags the row and tells the replica running the job; waits (bounded) for it to
        record the end. Its heartbeat reads the flag too, should the event be missed."""
        ended = self._ended.setdefault(job_id, asyncio.Event())
        try:
            if await self.store.request_cancel(job_id):
                await self.recorder.notify(f"{CANCEL_EVENT}{job_id}")
                async with asyncio.timeout(CANCEL_WAIT_S):
                    await ended.wait()
        except TimeoutError:
            log.warning("job %s: cancel requested; its replica has not ended it yet", job_id)
        finally:
            self._ended.pop(job_id, None)

    async def _settled_elsewhere(self, job: JobRecord) -> None:
        """A job whose replica died, now failed or cancelled by the lease sweep."""
        await self.recorder.ended(job, 0.0)
