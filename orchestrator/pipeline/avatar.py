"""avatar: a job's avatar, from the cache or prepared once and shared while it is prepared.

An avatar is prepared once: its frames are decoded into a frame store and its face boxes
detected (detect.py), then kept under the data directory keyed by the video's content
hash (avatar_cache.py), so a second job with the same video sends no detection request.

Preparation publishes its progress as an AvatarPrefix (avatar_prefix.py), so a job renders
the frames already prepared while later ones are still being detected; a second job with
the same video shares the preparation under way (Preparations). The cache itself is only
ever complete: it is written in a `.partial` folder renamed into place at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.blocking import run_blocking
from orchestrator.errors import BadInput, PipelineError, unwrap
from orchestrator.files import Partial
from orchestrator.pipeline import avatar_cache
from orchestrator.pipeline import boxes as face_boxes
from orchestrator.pipeline.avatar_cache import Avatar, content_id, load_avatar
from orchestrator.pipeline.avatar_prefix import AvatarPrefix
from orchestrator.pipeline.decode import VideoInfo, probe_video, require_input
from orchestrator.pipeline.detect import detect_avatar
from orchestrator.pipeline.frame_store import FrameWriter
from orchestrator.settings import Settings
from orchestrator.triton import TritonClient

STAGE = "avatar"


@dataclass
class _Running:
    prefix: AvatarPrefix
    task: asyncio.Task[None]
    users: int = 0


@dataclass
class Preparations:
    """The avatars this process is preparing, by id: a job whose avatar is being prepared
    for another job shares that preparation instead of starting a second one. A
    preparation nobody waits for any more is cancelled."""

    avatars_dir: Path
    client: TritonClient
    settings: Settings
    _running: dict[str, _Running] = field(default_factory=dict)

    @asynccontextmanager
    async def join(
        self, video: Path, pool: Executor, name: str | None = None
    ) -> AsyncIterator[AvatarPrefix]:
        """The avatar of `video` as far as it is prepared: complete when cached, else
        growing while it is prepared. `name` is the video as the user knows it."""
        require_input(video, STAGE, name)
        avatar_id = await run_blocking(pool, content_id, video)
        running = self._running.get(avatar_id)
        if running is None:
            cached = load_avatar(self.avatars_dir / avatar_id)
            if cached is not None:
                yield AvatarPrefix.of(cached)
                return
            info = await run_blocking(pool, probe_video, video, name)
            # Another job may have started it while this one was probing.
            running = self._running.get(avatar_id) or self._start(video, avatar_id, info, name)
        running.users += 1
        try:
            yield running.prefix
        finally:
            running.users -= 1
            if running.users == 0 and not running.task.done():
                if self._running.get(avatar_id) is running:
                    del self._running[avatar_id]
                running.task.cancel()
                await asyncio.wait({running.task})

    async def prepare(
        self,
        video: Path,
        pool: Executor,
        on_frame: Callable[[int], None] | None = None,
        name: str | None = None,
    ) -> Avatar:
        """The whole prepared avatar; `on_frame` gets the count of frames decoded."""
        async with self.join(video, pool, name) as prefix:
            stop = prefix.listen(lambda p: on_frame(p.frames_decoded)) if on_frame else None
            try:
                return await prefix.result()
            finally:
                if stop:
                    stop()

    def _start(self, video: Path, avatar_id: str, info: VideoInfo, name: str | None) -> _Running:
        scratch = avatar_cache.new_scratch(self.avatars_dir / avatar_id)
        writer = FrameWriter(
            scratch.path, self.settings.avatar_frame_codec, self.settings.avatar_jpeg_quality
        )
        prefix = AvatarPrefix(
            avatar_id,
            info.width,
            info.height,
            info.fps,
            lambda: writer.reader(info.width, info.height),
        )
        work = _Preparation(video, info, name, avatar_id, scratch, writer, prefix, self)
        task = asyncio.create_task(work.run(), name=f"prepare-avatar-{avatar_id}")
        running = _Running(prefix, task)
        self._running[avatar_id] = running

        def forget(_: asyncio.Task[None]) -> None:
            if self._running.get(avatar_id) is running:
                del self._running[avatar_id]

        task.add_done_callback(forget)
        return running


@dataclass
class _Preparation:
    """One avatar's preparation: decode into the store, detect keyframes, publish the
    prefix as boxes become final, then write the cache."""

    video: Path
    info: VideoInfo
    name: str | None
    avatar_id: str
    scratch: Partial
    writer: FrameWriter
    prefix: AvatarPrefix
    owner: Preparations

    async def run(self) -> None:
        """Never raises but cancellation: the outcome goes to the prefix's waiters."""
        settings = self.owner.settings
        # Its own pool: a preparation may outlive the job that started it.
        pool = ThreadPoolExecutor(settings.work_threads, thread_name_prefix="dh-avatar")
        try:
            self.prefix.finish(await self._prepare(pool))
        except asyncio.CancelledError:
            self.prefix.fail(PipelineError(STAGE, "the avatar's preparation was cancelled"))
            raise
        except Exception as exc:  # every failure reaches the jobs rendering this avatar
            self.prefix.fail(unwrap(exc, STAGE))
        finally:
            # Threads first: one may still be writing into the scratch folder.
            pool.shutdown(wait=True, cancel_futures=True)
            self.scratch.discard()  # gone already once renamed into place

    async def _prepare(self, pool: ThreadPoolExecutor) -> Avatar:
        owner, info, label = self.owner, self.info, self.name or self.video.name
        detected = await detect_avatar(
            self.video,
            info,
            self.name,
            self.writer,
            self.prefix,
            owner.client,
            owner.settings,
            pool,
        )
        if not face_boxes.has_face(detected.boxes).any():
            raise BadInput(
                STAGE,
                f"no face found in avatar {label}: the detector checked "
                f"{detected.detected_frames} of its {detected.frame_count} frames and found none",
            )
        avatar_cache.write_avatar(
            self.scratch.path,
            avatar_id=self.avatar_id,
            source_name=label,
            width=info.width,
            height=info.height,
            fps=info.fps,
            frame_count=detected.frame_count,
            detected_frames=detected.detected_frames,
            frame_codec=owner.settings.avatar_frame_codec,
            boxes=detected.boxes,
            faces=detected.faces,
        )
        await run_blocking(pool, avatar_cache.install, self.scratch)
        avatar = load_avatar(self.scratch.target)
        if avatar is None:
            raise PipelineError(STAGE, f"the prepared avatar {label} could not be read back")
        return avatar
