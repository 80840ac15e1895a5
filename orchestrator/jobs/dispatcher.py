"""The dispatcher: claims queued jobs while this replica has free slots and every
dependency is up.

The store is the queue: a job is a row in state "queued" until a replica claims it,
oldest first. The dispatcher wakes on events (a submission, a job ending, another
replica's NOTIFY, the lease sweep's tick, the dependencies coming back), never on a bare
timer; while a dependency is down it starts nothing, so an outage leaves jobs queued
instead of starting them only to fail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from orchestrator.dependencies import Dependencies
from orchestrator.jobs.store import JobRecord, JobStore, StoreUnavailable
from orchestrator.settings import Settings

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        dependencies: Dependencies,
        owner: str,
        running_count: Callable[[], int],
        launch: Callable[[JobRecord], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.dependencies = dependencies
        self.owner = owner  # the lease owner claims are made for
        self._running_count = running_count
        self._launch = launch  # starts a claimed job; counted in running_count() at once
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        dependencies.on_ready(self.wake)

    def wake(self) -> None:
        """Something changed that may let a job start: look again."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._dispatch(), name="dispatcher")
        self.wake()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _dispatch(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.dependencies.ready:
                continue  # queued jobs wait; the dependencies' on_ready wakes this loop
            try:
                while self._running_count() < self.settings.max_running_jobs:
                    job = await self.store.claim_job(self.owner, self.settings.lease_s)
                    if job is None:
                        break
                    self._launch(job)
            except StoreUnavailable as exc:
                # The lease sweep wakes this loop again at its next tick.
                log.warning("no job claimed: %s", exc.message)
