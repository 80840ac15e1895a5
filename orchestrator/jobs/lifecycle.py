"""A job's life cycle as one table: its states, why it left one, and the moves allowed.

Every state change of a job in the jobs layer goes through `transition`, which refuses a
move the table does not list with `IllegalTransition`. The store's own claim (queued to
running, one atomic statement so two replicas cannot both take a job) is the one move
made in SQL; it is in the table too, and the in-memory test store makes it through here.

The states themselves are orchestrator.jobs.states' (the records use them too).
"""

from __future__ import annotations

import time

from orchestrator.errors import Conflict
from orchestrator.jobs.states import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    AvatarState,
    JobState,
    StopReason,
)
from orchestrator.jobs.store.records import JobError, JobRecord

__all__ = [
    "ACTIVE_STATES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "AvatarState",
    "IllegalTransition",
    "JobState",
    "StopReason",
    "allowed",
    "transition",
]

STAGE = "jobs"


_Q, _R, _S, _F, _C = (
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.SUCCEEDED,
    JobState.FAILED,
    JobState.CANCELLED,
)
# (from, to) -> the reasons that may make that move; None is the claim, which has none.
TRANSITIONS: dict[tuple[JobState, JobState], frozenset[StopReason | None]] = {
    (_Q, _R): frozenset({None}),
    (_Q, _C): frozenset({StopReason.CANCELLED}),
    (_R, _S): frozenset({StopReason.COMPLETED}),
    (_R, _F): frozenset(
        {StopReason.FAILED, StopReason.DEADLINE, StopReason.OUTAGE, StopReason.INTERRUPTED}
    ),
    (_R, _C): frozenset({StopReason.CANCELLED}),
    # Back to the queue: an outage (attempt counted), a graceful stop (attempt given back),
    # a dead replica (attempt counted).
    (_R, _Q): frozenset({StopReason.OUTAGE, StopReason.SHUTDOWN, StopReason.INTERRUPTED}),
}


class IllegalTransition(Conflict):
    """A move the life-cycle table does not allow (HTTP 409)."""

    def __init__(self, job_id: str, was: str, to: str, reason: StopReason | None) -> None:
        why = "claimed" if reason is None else reason.value
        super().__init__(STAGE, f"job '{job_id}' cannot go from {was} to {to} ({why})")
        self.was, self.to, self.reason = was, to, reason


def allowed(was: JobState, to: JobState, reason: StopReason | None) -> bool:
    return reason in TRANSITIONS.get((was, to), frozenset())


def transition(
    job: JobRecord,
    to: JobState,
    reason: StopReason | None,
    error: JobError | None = None,
    now: float | None = None,
) -> JobState:
    """Moves `job` to `to` for `reason`, or raises IllegalTransition and leaves it alone.
    Returns the state it left (the `was` a conditional store update checks).

    What each move means for the record: claimed, an attempt starts; back in the queue,
    it has not started (a graceful stop gives its attempt back; an outage's error stays
    as the reason it waits); a final state has its time and, unless it succeeded, its
    error."""
    was = JobState(job.state)
    if not allowed(was, to, reason):
        raise IllegalTransition(job.id, was, to, reason)
    if to in (JobState.FAILED, JobState.CANCELLED) and error is None:
        raise ValueError(f"job '{job.id}': {to} ({reason}) needs an error that says why")
    now = time.time() if now is None else now
    job.state = to
    if to is JobState.RUNNING:
        job.attempts += 1
        job.started_at, job.finished_at, job.error, job.result = now, None, None, None
    elif to is JobState.QUEUED:
        job.started_at = None
        if reason is StopReason.SHUTDOWN:
            job.attempts = max(0, job.attempts - 1)
        if error is not None:
            job.error = error
    else:
        job.finished_at = now
        job.error = None if to is JobState.SUCCEEDED else error
    return was
