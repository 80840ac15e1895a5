"""Nothing accumulates: what a killed process left is removed at start-up, and finished
jobs expire.

Start-up, before avatars are prepared or jobs run: the `.partial` folders of avatar caches
that were being written or fetched (pipeline/avatar_cache.py, through the storage), job
folders with no job row and avatar source folders with no avatar row (a kill between
moving the files and writing the row) are removed. Staged uploads are LocalStorage's own
start-up clean.

Retention: every DH_RETENTION_SWEEP_S, jobs that ended (succeeded, failed, cancelled) more
than DH_RESULT_TTL ago are deleted, files first and then the row: a crash in between
leaves a row the next sweep deletes, never a folder nobody knows. Copies of a result kept
elsewhere (HeyGem's `temp/<code>-r.mp4`) go with it.

Orphans: in the same pass, one replica at a time (the store's `exclusive` lock), files
and bucket objects that no row owns and that have not changed for DH_ORPHAN_GRACE_S are
removed: what a replica killed between an upload and its row, or between a row's delete
and its files' removal, left behind. The grace covers work in progress (an upload whose
row is being written). Everything removed is counted in `dh_cleanup_removed_total{kind}`
and logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.jobs.store import JobRecord, JobStore
from orchestrator.metrics import ServiceMetrics
from orchestrator.settings import Settings
from orchestrator.storage import Storage
from orchestrator.storage.base import Leftover

log = logging.getLogger(__name__)
# Rows read per query of a sweep; a sweep goes on until none is left.
SWEEP_BATCH = 100
# The store's lock under which one replica at a time removes orphans.
ORPHAN_LOCK = "orphan-sweep"


class Retention:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        storage: Storage,
        metrics: ServiceMetrics,
        result_copy: Callable[[JobRecord], Path | None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.metrics = metrics
        # Where a copy of a job's result was placed outside the storage (HeyGem's folder).
        self.result_copy = result_copy
        self._sweeper: asyncio.Task[None] | None = None

    async def clean_leftovers(self) -> None:
        """Start-up only: nothing may be preparing an avatar or submitting a job yet."""
        partial = await self.storage.remove_partial_avatars()
        if partial:
            log.warning("removed %d interrupted avatar preparations: %s", len(partial), partial)
            self.metrics.removed("partial_avatar", len(partial))
        orphans: list[str] = []
        for job_id in await self.storage.job_ids():
            if await self.store.get_job(job_id) is None:
                await self.storage.remove_job(job_id)
                orphans.append(f"jobs/{job_id}")
        for avatar_id in await self.storage.avatar_source_ids():
            if await self.store.get_avatar(avatar_id) is None:
                # The source only: a prepared cache of the same video may serve a queued job.
                await self.storage.discard(self.storage.avatar_source_dir(avatar_id))
                orphans.append(f"avatar-sources/{avatar_id}")
        if orphans:
            log.warning("removed %d folders with no row: %s", len(orphans), orphans)
            self.metrics.removed("orphan", len(orphans))

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_on_schedule(), name="retention")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)

    async def sweep(self) -> int:
        """Deletes every job that finished more than DH_RESULT_TTL ago, then the orphans;
        returns how many jobs."""
        removed = await self.expire_jobs()
        await self.sweep_orphans()
        return removed

    async def sweep_orphans(self) -> list[Leftover]:
        """Removes what no row owns and nothing changed for DH_ORPHAN_GRACE_S; returns it
        (empty when another replica holds the sweep)."""
        removed: list[Leftover] = []
        async with self.store.exclusive(ORPHAN_LOCK) as holder:
            if not holder:
                return removed
            unchanged_since = time.time() - self.settings.orphan_grace_s
            for leftover in await self.storage.leftovers(unchanged_since):
                if await self._owned(leftover):
                    continue
                await self._remove(leftover)
                removed.append(leftover)
                self.metrics.removed(f"orphan_{leftover.kind.replace('-', '_')}")
        if removed:
            log.warning(
                "removed %d orphans: %s", len(removed), [f"{o.kind}/{o.id}" for o in removed]
            )
        return removed

    async def _owned(self, leftover: Leftover) -> bool:
        if leftover.kind == "job":
            return await self.store.get_job(leftover.id) is not None
        if await self.store.get_avatar(leftover.id) is not None:
            return True
        # A one-off video's prepared avatar belongs to the jobs that use it.
        return leftover.kind == "avatar" and await self.store.avatar_in_use(leftover.id)

    async def _remove(self, leftover: Leftover) -> None:
        if leftover.kind == "job":
            await self.storage.remove_job(leftover.id)
        elif leftover.kind == "avatar-source":
            await self.storage.remove_avatar_source(leftover.id)
        else:
            await self.storage.remove_avatar_cache(leftover.id)

    async def expire_jobs(self) -> int:
        """Deletes every job that finished more than DH_RESULT_TTL ago; returns how many."""
        cutoff = time.time() - self.settings.result_ttl.total_seconds()
        removed = 0
        while batch := await self.store.jobs_finished_before(cutoff, SWEEP_BATCH):
            for job in batch:
                await self._expire(job)
            removed += len(batch)
        if removed:
            log.info("retention: removed %d jobs finished before the TTL", removed)
        return removed

    async def _expire(self, job: JobRecord) -> None:
        # Asked of the storage (the bucket, with object storage): an outage raises here,
        # before anything is deleted, and the next sweep tries again.
        had_result = await self.storage.has_result(job.id)
        await self.storage.remove_job(job.id)
        copy = self.result_copy(job) if self.result_copy is not None else None
        if copy is not None and await asyncio.to_thread(_remove_file, copy):
            self.metrics.removed("result_copy")
        await self.store.delete_job(job.id)
        self.metrics.removed("job")
        if had_result:
            self.metrics.removed("result")

    async def _sweep_on_schedule(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:  # one failed pass (a full disk, a locked file) must not end them all
                log.exception("retention sweep failed; trying again at the next one")
            # A schedule, not a wait for state: the sweep runs every interval, whatever happens.
            await asyncio.sleep(self.settings.retention_sweep_s)


def _remove_file(path: Path) -> bool:
    """Whether a file was there to remove."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
