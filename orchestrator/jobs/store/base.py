"""The store's interface: what the service needs from a job store, whichever engine.

Nothing above the store sees an engine's own exceptions: a client code used twice is
`DuplicateCode`, an engine that cannot be reached is `StoreUnavailable` (HTTP 503).

Leases: a replica claims the oldest queued job atomically and holds it while it renders,
renewing the lease with a heartbeat; every write about a running job (heartbeat, stage,
outcome) is fenced by the lease owner and the attempt it was claimed for, so a replica
that was cut off while another claimed the job again writes nothing. A job whose lease
expired belongs to nobody and any replica's sweeper re-queues it
(orchestrator.jobs.leases). Preparing an avatar is leased the same way, keyed by the
video's content id, so one replica detects faces and the others wait for its result
(orchestrator.jobs.avatars). Events ("queued", "cancel:ID", "ended:ID", "avatar:ID",
"prepared:ID", "avatar-gone:ID") tell the other replicas about changes without waiting
for their next sweep.

Live sessions: the replica holding a session's WebRTC peer writes its row (opened, a
stats snapshot every tick, ended); any replica reads it, and a DELETE elsewhere flags
`end_requested` and sends "session-end:ID", answered by "session-ended:ID"
(orchestrator.live.sessions).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from orchestrator.errors import Conflict, DependencyUnavailable
from orchestrator.jobs.states import JobState
from orchestrator.jobs.store.records import (
    Admission,
    AvatarRecord,
    JobProgress,
    JobRecord,
    SessionRecord,
    SessionSnapshot,
)

STAGE = "store"
# The events replicas send each other through the store.
QUEUED_EVENT, CANCEL_EVENT, ENDED_EVENT = "queued", "cancel:", "ended:"
# Avatars: registered (a worker prepares it), a preparation lease released (waiters look
# for the result), deleted (a worker preparing it stops).
AVATAR_EVENT, PREPARED_EVENT, AVATAR_GONE_EVENT = "avatar:", "prepared:", "avatar-gone:"
# Live sessions: end one held by another replica; that replica has ended it.
SESSION_END_EVENT, SESSION_ENDED_EVENT = "session-end:", "session-ended:"


class DuplicateCode(Conflict):
    """A job with this client code exists already (HTTP 409)."""


class StoreUnavailable(DependencyUnavailable):
    """The job store cannot be reached (HTTP 503); names the engine and where, never a
    credential."""


class StoreFull(StoreUnavailable):
    """The store's disk is full: nothing can be written until space is freed (HTTP 507)."""

    http_status = 507


class JobStore(Protocol):
    async def add_job(self, job: JobRecord) -> JobRecord: ...
    async def admit_job(self, job: JobRecord, max_backlog: int) -> Admission:
        """Adds the job unless every replica's queued jobs are at the backlog bound plus
        the free slots of every live replica; checked and inserted as one step."""
        ...

    async def save_job(self, job: JobRecord) -> None: ...
    async def update_job(
        self, job: JobRecord, was: JobState, owner: str | None = None, attempt: int | None = None
    ) -> bool:
        """Saves the job only if its row is still in state `was` (and, given `owner`,
        still leased to it; given `attempt`, still in the attempt it was claimed for);
        False otherwise. Leaving "running" ends the lease."""
        ...

    async def get_job(self, job_id: str) -> JobRecord | None: ...
    async def job_by_code(self, code: str) -> JobRecord | None: ...
    async def delete_job(self, job_id: str) -> None: ...
    async def set_job_stage(
        self, job_id: str, stage: str, owner: str | None = None, attempt: int | None = None
    ) -> None:
        """Records a running job's stage (given `owner` and `attempt`: only while the row
        is still that owner's lease on that attempt)."""
        ...

    async def list_jobs(
        self, state: JobState | None, before_seq: int | None, limit: int
    ) -> list[JobRecord]: ...
    async def jobs_in(self, states: tuple[JobState, ...]) -> list[JobRecord]: ...
    async def jobs_finished_before(self, when: float, limit: int) -> list[JobRecord]: ...
    async def count_jobs(self) -> dict[str, int]: ...
    async def avatar_in_use(self, avatar_id: str) -> bool: ...
    # leases
    async def claim_job(self, owner: str, lease_s: float) -> JobRecord | None:
        """The oldest queued job, now running under `owner`'s lease (attempts counted)."""
        ...

    async def heartbeat(
        self,
        job_id: str,
        owner: str,
        lease_s: float,
        progress: JobProgress | None,
        attempt: int | None = None,
    ) -> bool | None:
        """Renews the lease and records progress: None if the lease is no longer
        `owner`'s (or, given `attempt`, the job was claimed again since), else whether a
        cancel was requested."""
        ...

    async def stale_jobs(self, previous: str | None) -> list[JobRecord]:
        """Running jobs whose lease expired, or (`previous`) whose owner starts with it."""
        ...

    async def update_stale(self, job: JobRecord, previous: str | None) -> bool:
        """Saves a job of stale_jobs() if it is still stale and held by the same owner."""
        ...

    async def request_cancel(self, job_id: str) -> bool:
        """Flags a running job for its replica to stop; False if it is not running."""
        ...

    async def register_replica(self, owner: str, slots: int, ttl_s: float) -> None: ...
    async def drop_replica(self, owner: str) -> None: ...
    async def notify(self, event: str) -> None: ...
    def subscribe(self, listener: Callable[[str], None]) -> None:
        """`listener(event)` runs for every event any replica sends (this one included)."""
        ...

    # avatar preparation leases (keyed by the video's content id)
    async def claim_preparation(
        self, avatar_id: str, owner: str, lease_s: float, previous: str | None = None
    ) -> bool:
        """True if `owner` now holds the lease to prepare this video: nobody held it, its
        lease expired, `owner` held it already, or (`previous`) its owner starts with it."""
        ...

    async def renew_preparation(self, avatar_id: str, owner: str, lease_s: float) -> bool:
        """Extends `owner`'s lease; False if it is no longer `owner`'s."""
        ...

    async def release_preparation(self, avatar_id: str, owner: str) -> None: ...

    # avatars
    async def add_avatar(self, avatar: AvatarRecord) -> AvatarRecord: ...
    async def save_avatar(self, avatar: AvatarRecord) -> None: ...
    async def get_avatar(self, avatar_id: str) -> AvatarRecord | None: ...
    async def list_avatars(self) -> list[AvatarRecord]: ...
    async def delete_avatar(self, avatar_id: str) -> None: ...
    # live sessions (written by the replica holding the session, read by every replica)
    async def add_session(self, session: SessionRecord) -> None:
        """Writes the whole row (over the one there, if any: the holder's word wins)."""
        ...

    async def refresh_session(
        self, session_id: str, replica: str, snapshot: SessionSnapshot
    ) -> bool | None:
        """Writes the holder's snapshot (an "ended" one ends the row): None if the row is
        not an open session of `replica` any more, else whether an end was requested."""
        ...

    async def end_sessions(self, replica: str) -> int:
        """Marks ended every open session whose replica starts with `replica` (a replica
        stopping: its owner name; starting again: "<name>#", its previous incarnations)."""
        ...

    async def get_session(self, session_id: str) -> SessionRecord | None: ...
    async def list_sessions(self, fresh_s: float) -> list[SessionRecord]:
        """Open sessions written within `fresh_s` seconds (their holder is alive), newest
        first."""
        ...

    async def request_session_end(self, session_id: str) -> bool:
        """Flags an open session for its holder to end; False if it is not open."""
        ...

    async def purge_sessions(self, older_than_s: float) -> None:
        """Deletes session rows not written for `older_than_s` seconds (ended, or their
        holder died)."""
        ...

    # the engine itself
    @property
    def where(self) -> str:
        """The engine and where it is, for messages (never a credential)."""
        ...

    async def ping(self) -> None:
        """Returns if the store answers now; StoreUnavailable saying why if not. One quick
        round trip (orchestrator.dependencies puts the deadline on it)."""
        ...

    def exclusive(self, name: str) -> AbstractAsyncContextManager[bool]:
        """Whether this replica holds the cluster-wide lock `name` for the block (never
        waits: False when another holds it). For work one replica at a time does, such as
        sweeping orphans."""
        ...

    async def close(self) -> None: ...
