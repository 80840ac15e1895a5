"""Registered avatars: an uploaded video prepared (decoded, faces detected) in the background.

The avatar id is the content id of the video, the key of the pipeline's avatar cache: a
job naming the avatar finds its face boxes there and detects nothing. Preparation runs
at most `max_preparing_avatars` at a time; an avatar found "preparing" at start-up (the
server stopped meanwhile) is prepared again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.dependencies import Dependencies
from orchestrator.errors import Conflict, DependencyUnavailable, NotFound, PipelineError, describe
from orchestrator.jobs.lifecycle import AvatarState
from orchestrator.jobs.store import PREPARING, READY, AvatarRecord, JobStore
from orchestrator.pipeline.avatar_cache import Avatar
from orchestrator.pipeline.runner import Engine
from orchestrator.settings import Settings
from orchestrator.storage import Storage

log = logging.getLogger(__name__)
STAGE = "avatar"


class Avatars:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        store: JobStore,
        storage: Storage,
        admission: asyncio.Lock,
        dependencies: Dependencies,
    ) -> None:
        self.settings = settings
        self.dependencies = dependencies
        # Shared with the scheduler: "is it in use?" and "delete" happen as one step
        # against "does it exist?" and "queue a job" there.
        self.admission = admission
        self.engine = engine
        self.store = store
        self.storage = storage
        self._slots = asyncio.Semaphore(settings.max_preparing_avatars)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._frames_seen: dict[str, int] = {}

    async def start(self) -> None:
        for avatar in await self.store.list_avatars():
            if avatar.state == PREPARING:
                log.info("avatar %s was being prepared at shutdown; preparing it again", avatar.id)
                self._spawn(avatar)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def frames_seen(self, avatar_id: str) -> int | None:
        return self._frames_seen.get(avatar_id)

    async def wait_prepared(self, avatar_id: str) -> None:
        """Returns once a preparation of this avatar in progress has ended (in any way)."""
        task = self._tasks.get(avatar_id)
        if task is not None:
            await asyncio.wait({task})

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
        self._spawn(record)
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
            task = self._tasks.get(avatar_id)
            if task is not None:
                task.cancel()
                await asyncio.wait({task})
            await self.store.delete_avatar(avatar_id)
            await self.storage.remove_avatar(avatar_id)

    def _spawn(self, record: AvatarRecord) -> None:
        task = asyncio.create_task(self._prepare(record), name=f"avatar-{record.id}")
        self._tasks[record.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(record.id, None))

    async def _prepare_through_outages(
        self, record: AvatarRecord, on_frame: Callable[[int], None]
    ) -> Avatar:
        """Prepares once every dependency (Triton, object storage, the job store) is up,
        waiting for all of them at once; an outage midway is reported to the gate and costs
        an attempt, not the avatar (past DH_MAX_ATTEMPTS it fails with the outage as its
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
            record.frames_seen = avatar.frame_count
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
