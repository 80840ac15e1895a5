"""Avatars: a video registered once, prepared (decoded, faces detected) in the background.

The avatar id is the content id of the video, the key of the pipeline's avatar cache: a
job naming the avatar finds its face boxes there and detects nothing.

Two parts, so that roles can be split (orchestrator.roles):
- `AvatarRegistry` (every role that answers HTTP): records a registered avatar, deletes
  one, and tells the replicas that render ("avatar:ID") without preparing anything itself.
- `Avatars` (every role that renders): prepares registered avatars, and makes a job wait
  while another replica prepares the job's video.

One preparation per video in a fleet: preparing is leased in the store, keyed by the
content id (`claim_preparation`). A replica prepares a registered avatar only while it
holds the lease; a job whose video is not prepared anywhere claims the lease and prepares
it while it renders, and a job on another replica given the same video waits for that
preparation (woken by the holder's "prepared:ID" event or by this module's sweep, bounded
by the job's own deadline) and then uses the result instead of detecting faces again.
Leases are renewed every DH_LEASE_HEARTBEAT_S; a dead replica's lease expires after
DH_LEASE_S and another replica takes the preparation over.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from pathlib import Path

from orchestrator.blocking import run_blocking
from orchestrator.dependencies import Dependencies
from orchestrator.errors import Conflict, DependencyUnavailable, NotFound, PipelineError, describe
from orchestrator.jobs.leases import replica_name
from orchestrator.jobs.lifecycle import AvatarState
from orchestrator.jobs.store import (
    AVATAR_EVENT,
    AVATAR_GONE_EVENT,
    PREPARED_EVENT,
    PREPARING,
    READY,
    AvatarRecord,
    JobStore,
    StoreUnavailable,
)
from orchestrator.pipeline.avatar_cache import Avatar, load_avatar
from orchestrator.pipeline.runner import Engine
from orchestrator.settings import Settings
from orchestrator.storage import Storage, StorageUnavailable

log = logging.getLogger(__name__)
STAGE = "avatar"


async def _tell(store: JobStore, event: str) -> None:
    try:
        await store.notify(event)
    except StoreUnavailable as exc:  # the others find out at their next sweep
        log.warning("could not tell the other replicas (%s): %s", event, exc.message)


class AvatarRegistry:
    """Registered avatars as the API sees them; preparation is a renderer's (`Avatars`)."""

    def __init__(
        self, settings: Settings, store: JobStore, storage: Storage, admission: asyncio.Lock
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        # Shared with the scheduler: "is it in use?" and "delete" happen as one step
        # against "does it exist?" and "queue a job" there.
        self.admission = admission
        # This process's preparations, when it renders too (`dh serve`): progress is read
        # from them and a delete stops one before the files go.
        self.preparer: Avatars | None = None

    def frames_seen(self, avatar_id: str) -> int | None:
        return None if self.preparer is None else self.preparer.frames_seen(avatar_id)

    async def register(self, avatar_id: str, staged: Path, name: str) -> tuple[AvatarRecord, bool]:
        """(record, created): the same video uploaded again returns the existing avatar."""
        existing = await self.store.get_avatar(avatar_id)
        if existing is not None:
            await self.storage.discard(staged)
            return existing, False
        source = await self.storage.adopt(
            staged, self.storage.avatar_source_dir(avatar_id) / f"source{staged.suffix}"
        )
        record = AvatarRecord(
            id=avatar_id, created_at=time.time(), source_path=str(source), source_name=name
        )
        await self.store.add_avatar(record)
        # A renderer claims it now (any replica's sweep finds it otherwise).
        await _tell(self.store, f"{AVATAR_EVENT}{avatar_id}")
        return record, True

    async def delete(self, avatar_id: str) -> None:
        """Removes the avatar and its files; Conflict while a job still needs it."""
        async with self.admission:
            avatar = await self.store.get_avatar(avatar_id)
            if avatar is None:
                raise NotFound(STAGE, f"no avatar with id '{avatar_id}'")
            if await self.store.avatar_in_use(avatar_id):
                raise Conflict(
                    STAGE,
                    f"avatar '{avatar_id}' is used by a queued or running job; try again later",
                )
            if self.preparer is not None:
                await self.preparer.cancel(avatar_id)
            await self.store.delete_avatar(avatar_id)
            await self.storage.remove_avatar(avatar_id)
        await _tell(self.store, f"{AVATAR_GONE_EVENT}{avatar_id}")


class Avatars:
    """A renderer's avatar work: registered avatars prepared under a lease, at most
    `max_preparing_avatars` at a time, and jobs kept from preparing a video twice."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        store: JobStore,
        storage: Storage,
        dependencies: Dependencies,
        pool: Executor,
    ) -> None:
        self.settings = settings
        self.dependencies = dependencies
        self.pool = pool  # short blocking reads (a cache's metadata and boxes)
        self.engine = engine
        self.store = store
        self.storage = storage
        # "<name>#<incarnation>", as job leases (orchestrator.jobs.leases): a restart takes
        # back its previous incarnation's preparations at once (that one is gone).
        self.previous = f"{replica_name(settings)}#"
        self.owner = f"{self.previous}{uuid.uuid4().hex[:8]}"
        self._slots = asyncio.Semaphore(settings.max_preparing_avatars)
        self._tasks: dict[str, asyncio.Task[None]] = {}  # registered avatars prepared here
        # Leases held for jobs rendering here that prepare their video as they go.
        self._for_jobs: dict[str, set[asyncio.Task[object]]] = {}
        self._frames_seen: dict[str, int] = {}
        self._kick = asyncio.Event()  # a registration or a released lease: look now
        self._changed = asyncio.Event()  # replaced at each change: every waiter wakes
        self._background: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Claims what is waiting to be prepared (a previous incarnation's preparations at
        once), then renews, sweeps and listens in the background."""
        self.store.subscribe(self._on_event)
        await self._claim_registered()
        self._sweeper = asyncio.create_task(self._sweep(), name="avatar-leases")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._background, return_exceptions=True)
        for avatar_id in list(self._for_jobs):
            await self._release(avatar_id)

    def frames_seen(self, avatar_id: str) -> int | None:
        return self._frames_seen.get(avatar_id)

    async def cancel(self, avatar_id: str) -> None:
        """Stops this replica's preparation of a registered avatar (it was deleted)."""
        task = self._tasks.get(avatar_id)
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    async def wait_prepared(self, avatar_id: str) -> None:
        """Returns once the video's avatar is prepared (fetched to this host if another
        replica kept it), or once this replica holds the lease to prepare it (the job then
        prepares it as it renders). While another replica prepares it, waits for that;
        the caller's deadline bounds the wait."""
        task = self._tasks.get(avatar_id)
        if task is not None:
            await asyncio.wait({task})
        waiting = False
        while True:
            changed = self._changed  # taken first: a change during the checks is not missed
            if await self._prepared(avatar_id):
                return
            if await self._claim(avatar_id):
                self._hold_for_job(avatar_id)
                return
            if not waiting:
                log.info("avatar %s is being prepared by another replica; waiting", avatar_id)
                waiting = True
            await changed.wait()

    # leases

    async def _prepared(self, avatar_id: str) -> bool:
        await self.storage.fetch_avatar(avatar_id)
        cache = self.storage.avatar_cache_dir(avatar_id)
        return await run_blocking(self.pool, load_avatar, cache) is not None

    def _hold_for_job(self, avatar_id: str) -> None:
        """The lease stays held while the job (the current task) may still prepare it."""
        job = asyncio.current_task()
        assert job is not None
        holders = self._for_jobs.setdefault(avatar_id, set())
        holders.add(job)

        def done(_: asyncio.Task[object]) -> None:
            holders.discard(job)
            if not holders and self._for_jobs.get(avatar_id) is holders:
                del self._for_jobs[avatar_id]
                self._in_background(self._release(avatar_id))

        job.add_done_callback(done)

    def _in_background(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _release(self, avatar_id: str) -> None:
        self._for_jobs.pop(avatar_id, None)
        try:
            await self.store.release_preparation(avatar_id, self.owner)
        except StoreUnavailable as exc:  # it expires instead
            log.warning("avatar %s: lease not released: %s", avatar_id, exc.message)
            return
        await _tell(self.store, f"{PREPARED_EVENT}{avatar_id}")

    def _on_event(self, event: str) -> None:
        if event.startswith(AVATAR_EVENT):
            self._kick.set()
        elif event.startswith(PREPARED_EVENT):
            self._wake_waiters()
            self._kick.set()  # a registered avatar's holder may have given up
        elif event.startswith(AVATAR_GONE_EVENT):
            task = self._tasks.get(event.removeprefix(AVATAR_GONE_EVENT))
            if task is not None:
                task.cancel()

    def _wake_waiters(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _sweep(self) -> None:
        """Every DH_LEASE_HEARTBEAT_S (sooner on an event): renews this replica's leases,
        lets go of those whose video is prepared, claims what nobody prepares (a fresh
        registration, a dead replica's preparation), and wakes the jobs that wait."""
        while True:
            try:
                async with asyncio.timeout(self.settings.lease_heartbeat_s):
                    await self._kick.wait()
            except TimeoutError:
                pass  # the heartbeat's tick
            self._kick.clear()
            try:
                await self._renew()
                await self._claim_registered()
            except (StoreUnavailable, StorageUnavailable) as exc:
                log.warning("avatar leases: %s", exc.message)
            self._wake_waiters()

    async def _renew(self) -> None:
        for avatar_id in list(self._for_jobs):
            if avatar_id not in self._tasks and await self._prepared(avatar_id):
                # The job prepared it: kept where the others look, then let go at once
                # rather than when the job ends.
                await self.storage.publish_avatar(avatar_id)
                await self._release(avatar_id)
                continue
            await self.store.renew_preparation(avatar_id, self.owner, self.settings.lease_s)
        for avatar_id in list(self._tasks):
            await self.store.renew_preparation(avatar_id, self.owner, self.settings.lease_s)

    async def _claim(self, avatar_id: str) -> bool:
        return await self.store.claim_preparation(
            avatar_id, self.owner, self.settings.lease_s, self.previous
        )

    async def _claim_registered(self) -> None:
        for avatar in await self.store.list_avatars():
            if len(self._tasks) >= self.settings.max_preparing_avatars:
                return  # claimed only with a free slot: an idle replica takes the rest
            if avatar.state != PREPARING or avatar.id in self._tasks:
                continue
            if await self._claim(avatar.id):
                log.info("avatar %s: preparing it here", avatar.id)
                self._spawn(avatar)

    # preparing a registered avatar

    def _spawn(self, record: AvatarRecord) -> None:
        task = asyncio.create_task(self._prepare(record), name=f"avatar-{record.id}")
        self._tasks[record.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(record.id, None))

    async def _prepare_through_outages(
        self, record: AvatarRecord, on_frame: Callable[[int], None]
    ) -> Avatar:
        """Prepares once Triton (and object storage) is ready; an outage midway costs an
        attempt, not the avatar (past DH_MAX_ATTEMPTS it fails with the outage as its
        reason). With object storage, a cache another replica prepared is fetched rather
        than detected again, and a new one is published for the others."""
        for attempt in range(1, self.settings.max_attempts + 1):
            await self.dependencies.wait_ready()
            try:
                async with self._slots:
                    source = Path(record.source_path)
                    async with self.storage.avatar_source(record.id, source) as local:
                        await self.storage.fetch_avatar(record.id)
                        avatar = await self.engine.prepare_avatar(
                            local, on_frame, record.source_name
                        )
                    await self.storage.publish_avatar(record.id)
                    return avatar
            except DependencyUnavailable as exc:
                self.dependencies.report_down(exc)
                if attempt == self.settings.max_attempts:
                    raise
                log.warning("avatar %s: %s; prepared again when it is back", record.id, exc)
        raise AssertionError("max_attempts >= 1")

    async def _prepare(self, record: AvatarRecord) -> None:
        def on_frame(count: int) -> None:
            self._frames_seen[record.id] = count

        try:
            avatar = await self._prepare_through_outages(record, on_frame)
            record.state = READY
            record.frames, record.fps = avatar.frame_count, avatar.fps
            record.width, record.height = avatar.width, avatar.height
            record.frames_with_face = avatar.frames_with_face
            record.detected_frames = avatar.detected_frames
            record.faces = avatar.first_faces()
            record.frames_seen = avatar.frame_count
        except asyncio.CancelledError:
            await self._release(record.id)  # deleted, or this replica stops: others may
            raise
        except PipelineError as exc:
            record.state, record.error = AvatarState.FAILED, exc.as_record()
        except Exception as exc:  # an untyped fault still ends the avatar with a reason
            log.exception("preparing avatar %s failed", record.id)
            record.state = AvatarState.FAILED
            record.error = {"stage": STAGE, "message": describe(exc)}
        finally:
            self._frames_seen.pop(record.id, None)
        record.finished_at = time.time()
        if await self.store.get_avatar(record.id) is not None:
            await self.store.save_avatar(record)
        await self._release(record.id)
