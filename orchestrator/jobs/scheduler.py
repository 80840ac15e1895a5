"""The scheduler: at most N jobs at once per replica, deadlines, cancellation, outcomes.

The store is the queue: a job is a row in state "queued" until a replica claims it,
oldest first, whenever it has a free slot. The dispatcher wakes on events (a submission,
a job ending, another replica's NOTIFY, the lease sweep's tick), never on a bare timer.
Each running job is one asyncio task around `Engine.generate` under a deadline;
cancelling the task cancels the pipeline's task group.

Admission (orchestrator.jobs.admission) queues jobs and tells the scheduler.

Leases (orchestrator.jobs.leases) replace "running at start-up" recovery: a running job
is held by its replica's lease; a job whose replica died is queued again once its lease
expires (its attempt counted; past `max_attempts` it fails with "interrupted"). A
graceful shutdown puts running jobs back in the queue without counting the attempt.

Cancellation reaches the replica that runs the job: DELETE flags the row and sends an
event; that replica stops the job, and the DELETE answers once the row says so (or after
a bounded wait).

Triton outages: no job starts while Triton is not ready (TritonGate); a job whose Triton
went away mid-render goes back to the queue with the attempt counted, and runs again
when Triton is back (past `max_attempts` it fails with the outage as its reason).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from orchestrator.errors import (
    Conflict,
    NotFound,
    PipelineError,
    describe,
)
from orchestrator.jobs.admission import Admission
from orchestrator.jobs.avatars import Avatars
from orchestrator.jobs.leases import Leases
from orchestrator.jobs.readiness import OUTAGES, TritonGate
from orchestrator.jobs.store import (
    CANCEL_EVENT,
    CANCELLED,
    ENDED_EVENT,
    FAILED,
    QUEUED,
    QUEUED_EVENT,
    RUNNING,
    SUCCEEDED,
    TERMINAL_STATES,
    JobProgress,
    JobRecord,
    JobStore,
    StoreUnavailable,
)
from orchestrator.jobs.webhook import WebhookSender
from orchestrator.logs import current_job
from orchestrator.metrics import ServiceMetrics
from orchestrator.pipeline.encode import Watermark
from orchestrator.pipeline.runner import Engine, Progress
from orchestrator.settings import Settings
from orchestrator.storage import Storage

log = logging.getLogger(__name__)
STAGE = "scheduler"
# How long DELETE waits for a running job to wind down; the pipeline stops well within it.
CANCEL_WAIT_S = 5.0
# Recording a job's outcome while the store is away: tried again this often, until the
# job's lease would have expired anyway (another replica then runs it again).
RECORD_RETRY_S = 1.0


@dataclass
class _Running:
    task: asyncio.Task[None]
    progress: Progress | None = None
    stopping_for: str | None = None  # "cancel", "shutdown" or "lost" once asked to stop
    finishing: bool = False  # the outcome is being recorded; too late to cancel
    started: float = field(default_factory=time.monotonic)


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
        gate: TritonGate,
        on_succeeded: Callable[[JobRecord], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.store = store
        self.storage = storage
        self.avatars = avatars
        self.metrics = metrics
        self.webhooks = webhooks
        self.admission = admission
        admission.on_queued(self._queued)
        self._running: dict[str, _Running] = {}
        self._ended: dict[str, asyncio.Event] = {}  # DELETEs waiting on another replica
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._listening = False
        # Started and stopped by the owner (shared with avatar preparation).
        self.gate = gate
        gate.on_open(self._wake.set)
        storage.on_available(self._wake.set)  # object storage back after an outage
        # Awaited before a success is recorded (HeyGem's result file must exist by then);
        # a PipelineError from it fails the job instead.
        self.on_succeeded = on_succeeded
        self.leases = Leases(
            settings,
            store,
            running=self._progress_of_running,
            on_lost=lambda job_id: self._stop_job(job_id, "lost"),
            on_cancel=lambda job_id: self._stop_job(job_id, "cancel"),
            on_settled=self._settled_elsewhere,
            on_tick=self._wake.set,
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
        self._dispatcher = asyncio.create_task(self._dispatch(), name="dispatcher")
        self._wake.set()

    async def stop(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        running = list(self._running.values())
        for entry in running:
            entry.stopping_for = "shutdown"
            entry.task.cancel()
        await asyncio.gather(*(entry.task for entry in running), return_exceptions=True)
        if running:
            await self._notify(QUEUED_EVENT)  # another replica may take them now
        await self.leases.stop()

    async def _queued(self, _: JobRecord) -> None:
        """A job was admitted here: this replica may run it, and so may the others."""
        self._wake.set()
        await self._notify(QUEUED_EVENT)

    def _on_event(self, event: str) -> None:
        """An event from any replica (through the store)."""
        if event == QUEUED_EVENT:
            self._wake.set()
        elif event.startswith(CANCEL_EVENT):
            self._stop_job(event.removeprefix(CANCEL_EVENT), "cancel")
        elif event.startswith(ENDED_EVENT):
            waiter = self._ended.get(event.removeprefix(ENDED_EVENT))
            if waiter is not None:
                waiter.set()
            self._wake.set()  # a slot may be free on that replica's side of the count

    async def _notify(self, event: str) -> None:
        try:
            await self.store.notify(event)
        except StoreUnavailable as exc:  # the others find out at their next sweep
            log.warning("could not tell the other replicas (%s): %s", event, exc.message)

    # queries

    def live_progress(self, job_id: str) -> Progress | None:
        entry = self._running.get(job_id)
        return entry.progress if entry else None

    def running_count(self) -> int:
        return len(self._running)

    def _progress_of_running(self) -> dict[str, JobProgress | None]:
        return {
            job_id: None
            if entry.progress is None
            else JobProgress(
                entry.progress.stage,
                entry.progress.frames_done,
                entry.progress.frames_total,
                round(entry.progress.frames_per_second, 2),
            )
            for job_id, entry in self._running.items()
            if not entry.finishing
        }

    # cancellation

    def _stop_job(self, job_id: str, reason: str) -> None:
        entry = self._running.get(job_id)
        if entry is not None and not entry.finishing and entry.stopping_for is None:
            entry.stopping_for = reason
            entry.task.cancel()

    async def cancel(self, job_id: str) -> JobRecord:
        job = await self.store.get_job(job_id)
        if job is None:
            raise NotFound("jobs", f"no job with id '{job_id}'")
        if job.state == QUEUED:
            # Only if still queued: a replica may claim it at the same moment.
            job.state, job.finished_at = CANCELLED, time.time()
            job.error = {"stage": "queued", "message": "cancelled by the client"}
            if await self.store.update_job(job, was=QUEUED):
                await self.storage.remove_job(job_id)
                await self._forget_one_off_avatar(job)
                self.metrics.job_finished(CANCELLED, 0.0, {})
                self.webhooks.send(job)
                return job
            job = await self.store.get_job(job_id) or job  # claimed meanwhile: running now
        entry = self._running.get(job_id)
        if entry is not None:
            self._stop_job(job_id, "cancel")
            await asyncio.wait({entry.task}, timeout=CANCEL_WAIT_S)
        elif job.state == RUNNING:
            await self._cancel_elsewhere(job_id)
        elif job.state not in (QUEUED, RUNNING):
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
                await self._notify(f"{CANCEL_EVENT}{job_id}")
                async with asyncio.timeout(CANCEL_WAIT_S):
                    await ended.wait()
        except TimeoutError:
            log.warning("job %s: cancel requested; its replica has not ended it yet", job_id)
        finally:
            self._ended.pop(job_id, None)

    # running

    async def _dispatch(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.gate.is_open or not self.storage.available:
                continue  # queued jobs wait; Triton's gate or the storage wakes this loop
            try:
                while len(self._running) < self.settings.max_running_jobs:
                    job = await self.store.claim_job(self.replica, self.settings.lease_s)
                    if job is None:
                        break
                    task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
                    self._running[job.id] = _Running(task)
            except StoreUnavailable as exc:
                # The lease sweep wakes this loop again at its next tick.
                log.warning("no job claimed: %s", exc.message)

    async def _run(self, job: JobRecord) -> None:
        current_job.set(job.id)
        entry = self._running[job.id]
        try:
            await self._render(job, entry)
            entry.finishing = True
            # Recording the outcome must not be cut in half by a late cancel.
            if entry.stopping_for == "lost":
                log.warning("job %s: another replica holds it now; nothing recorded", job.id)
            elif job.state == QUEUED:
                await asyncio.shield(self._requeue_after_outage(job, entry))
            else:
                await asyncio.shield(self._finish(job, entry))
        finally:
            self._running.pop(job.id, None)
            self._wake.set()

    async def _render(self, job: JobRecord, entry: _Running) -> None:
        """Runs the pipeline on a claimed job; leaves the outcome on `job`. Re-raises only
        a shutdown."""

        counted = 0
        recorded_stage = "decode"
        stage_saves: set[asyncio.Task[None]] = set()

        def on_progress(progress: Progress) -> None:
            nonlocal counted, recorded_stage
            entry.progress = progress
            if progress.frames_done > counted:
                self.metrics.frames_rendered(progress.frames_done - counted)
                counted = progress.frames_done
            if progress.stage != recorded_stage:
                # Kept in the store as it changes: a job cut off by a crash is reported in
                # the stage it was in, not the one it started in.
                recorded_stage = progress.stage
                save = asyncio.create_task(self._save_stage(job.id, progress.stage))
                stage_saves.add(save)
                save.add_done_callback(stage_saves.discard)

        try:
            log.info("job %s started (attempt %d) on %s", job.id, job.attempts, self.replica)
            async with asyncio.timeout(job.deadline_s):
                await self.avatars.wait_prepared(job.avatar_id)
                # Inputs on local disk (fetched from object storage), the result kept after.
                async with self.storage.job_files(job) as files:
                    result = await self.engine.generate(
                        files.video,
                        files.audio,
                        files.result,
                        on_progress,
                        watermark=Watermark.from_settings(self.settings) if job.watermark else None,
                        audio_name=job.audio_name,
                        avatar_name=job.video_name,
                    )
            job.state = SUCCEEDED
            job.stage_seconds = dict(result.stage_seconds)
            job.frames_done = job.frames_total = result.frames
            job.frames_per_second = result.frames / max(result.wall_seconds, 1e-6)
            job.result = {
                "frames": result.frames,
                "fps": float(result.fps),
                "width": result.avatar.width,
                "height": result.avatar.height,
                "audio_seconds": round(result.audio_seconds, 3),
                "frames_without_face": result.frames_without_face,
                "wall_seconds": round(result.wall_seconds, 3),
                "bytes": result.output.stat().st_size,
            }
        except TimeoutError:
            job.state = FAILED
            job.error = {
                "stage": self._stage(entry, job),
                "message": f"the job ran past its deadline of {job.deadline_s:g} s "
                f"({self.settings.job_deadline_base_s:g} s + "
                f"{self.settings.job_deadline_per_audio_s:g} s per second of its "
                f"{job.audio_seconds:.1f} s of audio) and was stopped",
            }
        except asyncio.CancelledError:
            if entry.stopping_for == "lost":
                return  # the job is another replica's now: nothing of it is recorded here
            if entry.stopping_for != "cancel":
                await self._requeue_after_shutdown(job)
                raise
            job.state = CANCELLED
            job.error = {"stage": self._stage(entry, job), "message": "cancelled by the client"}
        except OUTAGES as exc:
            # Not the job's fault: it waits in the queue until Triton or object storage is
            # back (the dispatcher starts nothing meanwhile), its attempt counted.
            self.gate.report_outage(exc)
            job.state = QUEUED if job.attempts < self.settings.max_attempts else FAILED
            job.error = exc.as_record()
        except PipelineError as exc:
            job.state, job.error = FAILED, exc.as_record()
        except Exception as exc:  # an untyped fault still ends the job with a reason
            log.exception("job %s failed unexpectedly", job.id)
            job.state = FAILED
            job.error = {"stage": self._stage(entry, job), "message": describe(exc)}
        finally:
            # The stage records go first: each only updates a job that is still running.
            await asyncio.gather(*stage_saves, return_exceptions=True)

    async def _save_stage(self, job_id: str, stage: str) -> None:
        try:
            await self.store.set_job_stage(job_id, stage)
        except StoreUnavailable as exc:  # the next heartbeat writes it
            log.warning("job %s: stage %s not recorded: %s", job_id, stage, exc.message)

    async def _record(self, job: JobRecord) -> bool:
        """Saves the outcome of a job this replica holds; False if the lease was lost.
        While the store is away it is tried again until the lease would have expired."""
        deadline = time.monotonic() + self.settings.lease_s
        while True:
            try:
                saved = await self.store.update_job(job, was=RUNNING, owner=self.replica)
            except StoreUnavailable as exc:
                if time.monotonic() > deadline:
                    log.error("job %s: outcome not recorded (%s); it runs again", job.id, exc)
                    return False
                # A retry pause while the store is away, not a wait for state.
                await asyncio.sleep(RECORD_RETRY_S)
                continue
            if not saved:
                log.warning("job %s: its lease was lost before its outcome was recorded", job.id)
            return saved

    async def _finish(self, job: JobRecord, entry: _Running) -> None:
        job.finished_at = time.time()
        if job.state == SUCCEEDED and self.on_succeeded is not None:
            try:
                await self.on_succeeded(job)
            except PipelineError as exc:
                job.state, job.error = FAILED, exc.as_record()
        if job.state == SUCCEEDED:
            job.stage = "done"
        else:
            job.stage = self._stage(entry, job)
            if entry.progress is not None:
                job.frames_done = entry.progress.frames_done
                job.frames_total = entry.progress.frames_total
        if not await self._record(job):
            return
        # Inputs go once the job has ended; only a result is kept.
        if job.state == SUCCEEDED:
            await self.storage.remove_job_inputs(job.id)
        else:
            await self.storage.remove_job(job.id)
        await self._forget_one_off_avatar(job)
        seconds = time.monotonic() - entry.started
        if job.state == SUCCEEDED:
            self.admission.job_took(seconds)
        self.metrics.job_finished(job.state, seconds, job.stage_seconds)
        log.info("job %s %s after %.2f s", job.id, job.state, seconds)
        self.webhooks.send(job)
        await self._notify(f"{ENDED_EVENT}{job.id}")

    async def _settled_elsewhere(self, job: JobRecord) -> None:
        """A job whose replica died, now failed or cancelled by the lease sweep."""
        await self.storage.remove_job(job.id)
        await self._forget_one_off_avatar(job)
        self.webhooks.send(job)
        await self._notify(f"{ENDED_EVENT}{job.id}")

    async def _requeue_after_outage(self, job: JobRecord, entry: _Running) -> None:
        """Back in the queue after Triton or the object store went away; the error stays on
        the record (as the reason it is waiting) until the job starts again."""
        assert job.error is not None
        log.warning(
            "job %s: %s: %s (attempt %d of %d); queued again",
            job.id,
            job.error["stage"],
            job.error["message"],
            job.attempts,
            self.settings.max_attempts,
        )
        job.stage = self._stage(entry, job)
        job.started_at = None
        if await self._record(job):
            await self._notify(QUEUED_EVENT)

    async def _requeue_after_shutdown(self, job: JobRecord) -> None:
        job.state, job.started_at = QUEUED, None
        job.attempts -= 1  # a graceful stop is not the job's fault
        try:
            await asyncio.shield(self.store.update_job(job, was=RUNNING, owner=self.replica))
        except StoreUnavailable as exc:  # its lease expires and another replica runs it
            log.warning("job %s not queued again at shutdown: %s", job.id, exc.message)

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

    @staticmethod
    def _stage(entry: _Running, job: JobRecord) -> str:
        if entry.progress is not None:
            return entry.progress.stage
        return job.stage or STAGE
