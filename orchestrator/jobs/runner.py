"""The runner: one claimed job through the pipeline, under its deadline, to an outcome.

`render` returns what happened (orchestrator.jobs.outcomes) and changes nothing on the
job; the recorder applies it. While rendering, it keeps the job's stage in the store as
it changes (a job cut off by a crash is reported in the stage it was in) and counts
frames for the metrics.

Only the job's own deadline is a deadline: a TimeoutError from anything else inside the
render is a failure with its own message. A cancellation the job's RunningJob asked for
(client cancel, shutdown, lease lost) is absorbed (`uncancel()`) and becomes an outcome;
any other cancellation propagates.
"""

from __future__ import annotations

import asyncio
import logging

from orchestrator.dependencies import Dependencies
from orchestrator.errors import DependencyUnavailable, PipelineError, describe, unwrap
from orchestrator.jobs.avatars import Avatars
from orchestrator.jobs.lifecycle import StopReason
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
from orchestrator.jobs.store import JobError, JobResult, JobStore, StoreUnavailable
from orchestrator.metrics import ServiceMetrics
from orchestrator.pipeline.encode import Watermark
from orchestrator.pipeline.faces import FaceChoice
from orchestrator.pipeline.runner import Engine, Progress
from orchestrator.pipeline.runner import JobResult as RenderResult
from orchestrator.settings import Settings
from orchestrator.storage import Storage

log = logging.getLogger(__name__)


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        store: JobStore,
        storage: Storage,
        avatars: Avatars,
        metrics: ServiceMetrics,
        dependencies: Dependencies,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.store = store
        self.storage = storage
        self.avatars = avatars
        self.metrics = metrics
        self.dependencies = dependencies

    async def render(self, running: RunningJob) -> Outcome:
        """Runs the pipeline on a claimed job. Raises only a cancellation it did not ask
        for."""
        job = running.job
        counted = 0
        recorded_stage = "decode"
        stage_saves: set[asyncio.Task[None]] = set()

        def on_progress(progress: Progress) -> None:
            nonlocal counted, recorded_stage
            running.progress = progress
            if progress.frames_done > counted:
                self.metrics.frames_rendered(progress.frames_done - counted)
                counted = progress.frames_done
            if progress.stage != recorded_stage:
                recorded_stage = progress.stage
                save = asyncio.create_task(self._save_stage(running, progress.stage))
                stage_saves.add(save)
                save.add_done_callback(stage_saves.discard)

        deadline = asyncio.timeout(job.deadline_s)
        try:
            async with deadline:
                await self.avatars.wait_prepared(job.avatar_id)
                # Inputs on local disk (fetched from object storage), the result kept after.
                async with self.storage.job_files(job) as files:
                    rendered = await self.engine.generate(
                        files.video,
                        files.audio,
                        files.result,
                        on_progress,
                        watermark=Watermark.from_settings(self.settings) if job.watermark else None,
                        audio_name=job.audio_name,
                        avatar_name=job.video_name,
                        restore_face=job.restore_face,
                        face=FaceChoice.parse(job.face),
                    )
            return _succeeded(rendered)
        except asyncio.CancelledError:
            stopped = stopped_outcome(running)
            if stopped is None:
                raise
            return stopped
        except TimeoutError as exc:
            if deadline.expired():
                return Failed(self._past_deadline(running), StopReason.DEADLINE)
            # Something inside gave up waiting; the job's own deadline had not passed.
            log.warning("job %s: a timeout before its deadline: %r", job.id, exc)
            return Failed(
                JobError(running.stage, f"timed out before the job's deadline: {describe(exc)}")
            )
        except Exception as exc:
            error = unwrap(exc, running.stage)
            if isinstance(error, DependencyUnavailable):
                # Not the job's fault: nothing starts until the dependency is back.
                self.dependencies.report_down(error)
                return Requeue(JobError.from_exception(error))
            if not isinstance(exc, PipelineError):  # an untyped fault still has a reason
                log.error("job %s failed unexpectedly", job.id, exc_info=exc)
            return Failed(JobError.from_exception(error))
        finally:
            # The stage records go first: each only updates a job that is still running.
            await asyncio.gather(*stage_saves, return_exceptions=True)

    def _past_deadline(self, running: RunningJob) -> JobError:
        job, settings = running.job, self.settings
        return JobError(
            running.stage,
            f"the job ran past its deadline of {job.deadline_s:g} s "
            f"({settings.job_deadline_base_s:g} s + {settings.job_deadline_per_audio_s:g} s "
            f"per second of its {job.audio_seconds:.1f} s of audio) and was stopped",
        )

    async def _save_stage(self, running: RunningJob, stage: str) -> None:
        job_id = running.job.id
        try:
            # Fenced: a replica that lost the job meanwhile writes nothing.
            await self.store.set_job_stage(job_id, stage, running.owner, running.attempt)
        except StoreUnavailable as exc:  # the next heartbeat writes it; the render goes on
            log.warning("job %s: stage %s not recorded: %s", job_id, stage, exc.message)


def _succeeded(rendered: RenderResult) -> Succeeded:
    return Succeeded(
        JobResult(
            frames=rendered.frames,
            fps=float(rendered.fps),
            width=rendered.avatar.width,
            height=rendered.avatar.height,
            audio_seconds=round(rendered.audio_seconds, 3),
            frames_without_face=rendered.frames_without_face,
            wall_seconds=round(rendered.wall_seconds, 3),
            bytes=rendered.output.stat().st_size,
        ),
        stage_seconds=dict(rendered.stage_seconds),
        frames_per_second=rendered.frames / max(rendered.wall_seconds, 1e-6),
    )


def stopped_outcome(running: RunningJob) -> Outcome | None:
    """Called where a CancelledError is caught in the job's task: the outcome of a stop its
    RunningJob asked for, the cancellation absorbed; None for any other cancellation (or
    one that arrived on top of ours), which the caller re-raises."""
    task = asyncio.current_task()
    if running.stop_reason is None or task is None or task.uncancel() > 0:
        return None
    if running.stop_reason is StopReason.LEASE_LOST:
        return LeaseLost()
    if running.stop_reason is StopReason.SHUTDOWN:
        return Shutdown()
    return Cancelled(running.stage)
