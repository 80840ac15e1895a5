"""What a render ended in, as a value: the runner returns one, the recorder applies it.

A render never changes its job; it says what happened, and orchestrator.jobs.recorder is
the one place that turns that into a state change (through the life-cycle table), files
kept or removed, metrics, a webhook and an event for the other replicas.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from orchestrator.jobs.lifecycle import StopReason
from orchestrator.jobs.store import JobError, JobRecord, JobResult
from orchestrator.pipeline.runner import Progress


@dataclass(frozen=True)
class Succeeded:
    result: JobResult
    stage_seconds: dict[str, float]
    frames_per_second: float


@dataclass(frozen=True)
class Failed:
    error: JobError
    reason: StopReason = StopReason.FAILED  # or DEADLINE


@dataclass(frozen=True)
class Cancelled:
    """The client cancelled the job while it rendered."""

    stage: str


@dataclass(frozen=True)
class Requeue:
    """A dependency went away mid-render: the job waits in the queue (its attempt counted)
    until it is back, or fails with `error` once it has had every attempt."""

    error: JobError


@dataclass(frozen=True)
class LeaseLost:
    """Another replica holds the job now; nothing of this render is recorded."""


@dataclass(frozen=True)
class Shutdown:
    """This replica stops: the job goes back to the queue, its attempt given back."""


Outcome = Succeeded | Failed | Cancelled | Requeue | LeaseLost | Shutdown
# The stop requests a running job honours, and what its render then returns.
STOPS = (StopReason.CANCELLED, StopReason.SHUTDOWN, StopReason.LEASE_LOST)


@dataclass
class RunningJob:
    """A job this replica renders: its task, its live progress, and whether it was asked
    to stop (and why) or has already ended (its outcome being recorded)."""

    job: JobRecord
    task: asyncio.Task[None] | None = None
    progress: Progress | None = None
    stop_reason: StopReason | None = None
    outcome: Outcome | None = None  # set once the render is over: too late to stop it
    started: float = field(default_factory=time.monotonic)
    # The lease this render holds, as claimed: every write about the job is fenced by it.
    owner: str | None = field(init=False)
    attempt: int = field(init=False)

    def __post_init__(self) -> None:
        self.owner, self.attempt = self.job.lease_owner, self.job.attempts

    def stop(self, reason: StopReason) -> bool:
        """Asks the render to stop for `reason` (one of STOPS); the first request wins. False
        when it is too late (it has ended) or a stop was asked already."""
        assert reason in STOPS, reason
        if self.outcome is not None or self.stop_reason is not None or self.task is None:
            return False
        self.stop_reason = reason
        self.task.cancel()
        return True

    @property
    def stage(self) -> str:
        """The stage the render is in (or was in when it ended)."""
        if self.progress is not None:
            return self.progress.stage
        return self.job.stage or "scheduler"
