"""Leases: which replica runs a job, and what happens when that replica is gone.

A replica claims a queued job atomically (orchestrator.jobs.store) and holds a lease on
it for DH_LEASE_S. Every DH_LEASE_HEARTBEAT_S this module renews the leases of the jobs
this replica renders (writing their progress to the row, so any replica can report it),
stops a job whose lease is no longer its own or whose cancel was requested elsewhere,
keeps this replica's slots registered (the cluster's capacity for admission), and
sweeps: a running job whose lease expired belongs to a replica that died, so it is
queued again with its attempt counted, or past DH_MAX_ATTEMPTS fails as "interrupted" in
the stage it was in. A dead replica's job therefore runs again within about
DH_LEASE_S + DH_LEASE_HEARTBEAT_S.

The store going away stops nothing here: renewals fail, the renders go on, and the
leases are renewed when it is back. A lease that expired meanwhile is still this
replica's until another replica re-queues the job (its attempt counted); every write
about the job is fenced by owner and attempt, so the replica that was cut off then
writes nothing, and its render is stopped at its next renewal.

Identity: the lease owner is "<name>#<incarnation>", the incarnation new at each start.
The name is DH_REPLICA_ID, or the host name and data directory, so a replica that
restarts (same host, same data) takes back its previous incarnation's jobs at once
instead of waiting for their leases to expire. Two replicas must therefore not share a
host and a data directory unless each has its own DH_REPLICA_ID.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import Awaitable, Callable

from orchestrator.jobs.lifecycle import JobState, StopReason, transition
from orchestrator.jobs.store import (
    QUEUED_EVENT,
    JobError,
    JobProgress,
    JobRecord,
    JobStore,
    StoreUnavailable,
)
from orchestrator.settings import Settings

log = logging.getLogger(__name__)
STAGE = "scheduler"


def replica_name(settings: Settings) -> str:
    return settings.replica_id or f"{socket.gethostname()}:{settings.data_dir.resolve()}"


class Leases:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        running: Callable[[], dict[str, tuple[int, JobProgress | None]]],
        on_lost: Callable[[str], None],
        on_cancel: Callable[[str], None],
        on_settled: Callable[[JobRecord], Awaitable[None]],
        on_tick: Callable[[], None],
    ) -> None:
        # Settings guarantees lease_heartbeat_s < lease_s (checked when they are read).
        self.settings = settings
        self.store = store
        self.name = replica_name(settings)
        self.owner = f"{self.name}#{uuid.uuid4().hex[:8]}"
        self._running = running
        self._on_lost = on_lost
        self._on_cancel = on_cancel
        self._on_settled = on_settled
        self._on_tick = on_tick
        self._task: asyncio.Task[None] | None = None
        self._store_down = False

    async def start(self) -> None:
        """Registers this replica, settles its previous incarnation's jobs (and any whose
        lease expired), then renews and sweeps in the background."""
        await self.store.register_replica(
            self.owner, self.settings.max_running_jobs, self.settings.lease_s
        )
        await self.sweep(previous=f"{self.name}#")
        self._task = asyncio.create_task(self._beat(), name="leases")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.store.drop_replica(self.owner)
        except StoreUnavailable as exc:  # its row expires on its own
            log.warning("could not unregister this replica: %s", exc.message)

    async def _beat(self) -> None:
        while True:
            try:
                await self.renew()
                await self.store.register_replica(
                    self.owner, self.settings.max_running_jobs, self.settings.lease_s
                )
                await self.sweep()
                if self._store_down:
                    log.info("the job store is back (%s)", self.store.where)
                self._store_down = False
            except StoreUnavailable as exc:
                if not self._store_down:
                    log.warning("%s; leases are renewed when it is back", exc.message)
                self._store_down = True
            self._on_tick()  # a claim attempt: another replica may have queued work
            # A schedule, not a wait for state: leases are renewed at a fixed rhythm.
            await asyncio.sleep(self.settings.lease_heartbeat_s)

    async def renew(self) -> None:
        for job_id, (attempt, progress) in self._running().items():
            held = await self.store.heartbeat(
                job_id, self.owner, self.settings.lease_s, progress, attempt
            )
            if held is None:
                log.warning("job %s: its lease was lost (taken over); stopping it", job_id)
                self._on_lost(job_id)
            elif held:
                self._on_cancel(job_id)

    async def sweep(self, previous: str | None = None) -> None:
        """Settles every running job whose lease expired (or, `previous`, that a previous
        incarnation of this replica held)."""
        for job in await self.store.stale_jobs(previous):
            if job.lease_owner == self.owner:
                continue  # a lease of ours that a slow heartbeat let lapse; renewed next
            await self._settle(job, previous)

    async def _settle(self, job: JobRecord, previous: str | None) -> None:
        holder = job.lease_owner or "a previous version"
        stage = job.stage or STAGE
        if job.cancel_requested:
            error = JobError(stage, "cancelled by the client")
            transition(job, JobState.CANCELLED, StopReason.CANCELLED, error)
        elif job.attempts >= self.settings.max_attempts:
            error = JobError(
                stage,
                f"interrupted: the server stopped while the job ran, "
                f"{job.attempts} times (DH_MAX_ATTEMPTS={self.settings.max_attempts})",
            )
            transition(job, JobState.FAILED, StopReason.INTERRUPTED, error)
        else:
            transition(job, JobState.QUEUED, StopReason.INTERRUPTED)
        if not await self.store.update_stale(job, previous):
            return  # renewed or settled by another replica meanwhile
        if job.state is JobState.QUEUED:
            log.info("job %s: %s stopped while it ran; queued again", job.id, holder)
            await self.store.notify(QUEUED_EVENT)
            self._on_tick()
        else:
            log.warning("job %s: %s stopped while it ran; %s", job.id, holder, job.state)
            await self._on_settled(job)
