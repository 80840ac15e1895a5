"""The states of a job and of an avatar, and why a job left one: plain values the records,
the stores and the API share. The moves between them are orchestrator.jobs.lifecycle's.

StrEnums: stored as their string and equal to it, so rows written before they existed load
unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class AvatarState(StrEnum):
    PREPARING = "preparing"
    READY = "ready"
    FAILED = "failed"


ACTIVE_STATES = (JobState.QUEUED, JobState.RUNNING)
TERMINAL_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class StopReason(StrEnum):
    """Why a job left the state it was in (none: a replica claimed it)."""

    COMPLETED = "completed"  # the render finished and its result is kept
    FAILED = "failed"  # the render failed: bad input, a model error, a bug
    DEADLINE = "deadline"  # the job's own deadline passed
    CANCELLED = "cancelled"  # the client asked (DELETE)
    SHUTDOWN = "shutdown"  # this replica stops gracefully: not the job's fault
    LEASE_LOST = "lease lost"  # another replica holds it now: nothing is recorded here
    OUTAGE = "outage"  # Triton or storage went away mid-render
    INTERRUPTED = "interrupted"  # the replica running it died (its lease expired)
