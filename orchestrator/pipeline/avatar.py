"""avatar: face boxes for every avatar frame, from face_detector on Triton, cached.

An avatar is prepared once: its frames are decoded into a frame store (frame_store.py: the
drive stage can walk them forwards and backwards without decoding again or holding them
in memory) and face boxes are detected on keyframes chosen by an adaptive stride
(keyframes.py), on frames scaled down to DH_DETECT_MAX_SIDE, then interpolated, padded and
smoothed. Everything is kept under the data directory keyed by the video's content hash:
a second job with the same video sends no detection request.

Preparation publishes its progress as an AvatarPrefix (avatar_prefix.py), so a job renders
the frames already prepared while later ones are still being detected; a second job with
the same video shares the preparation under way (Preparations). The cache itself is only
ever complete: it is written in a `.partial` folder renamed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from orchestrator.detection import select_faces
from orchestrator.errors import BadInput, PipelineError, unwrap
from orchestrator.pipeline import boxes as face_boxes
from orchestrator.pipeline.avatar_prefix import AvatarPrefix
from orchestrator.pipeline.decode import (
    VideoInfo,
    probe_video,
    read_video_frames,
    require_input,
)
from orchestrator.pipeline.frame_store import FrameCodec, FrameStore, FrameWriter
from orchestrator.pipeline.keyframes import KeyframePlan, no_face
from orchestrator.settings import Settings
from orchestrator.triton import TritonClient

STAGE = "avatar"
# S3FD's preprocessing: BGR minus these per-channel means (the network's training data).
S3FD_MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)
BOXES_FILE = "boxes.npy"
META_FILE = "meta.json"
HASH_CHUNK = 1 << 20
# Bump when the store's layout or the box maths change, so old caches are not reused.
STORE_VERSION = 3  # 3: adaptive stride, smaller detector input


@dataclass(frozen=True)
class Avatar:
    """A prepared avatar: metadata, per-frame face boxes and the path of its frame store."""

    avatar_id: str
    directory: Path
    width: int
    height: int
    fps: float
    frame_count: int
    boxes: np.ndarray  # [frame_count, 4] int32, -1 rows where no face was found
    detected_frames: int  # frames the detector looked at
    frame_codec: FrameCodec

    @property
    def frames_with_face(self) -> int:
        return int(face_boxes.has_face(self.boxes).sum())

    def open_frames(self) -> FrameStore:
        return FrameStore(self.directory, self.frame_codec, self.width, self.height)

    def summary(self) -> dict[str, object]:
        return {
            "avatar_id": self.avatar_id,
            "frames": self.frame_count,
            "fps": self.fps,
            "width": self.width,
            "height": self.height,
            "frames_with_face": self.frames_with_face,
            "detected_frames": self.detected_frames,
        }


def content_id(path: Path) -> str:
    """The avatar id: a hash of the video's bytes, so renamed copies share one cache."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()[:32]


def _partial_dir(avatars_dir: Path, avatar_id: str) -> Path:
    """A folder of the avatar's being written or removed: never read as a cache, and
    removed at start-up if a process dies with it (jobs.retention)."""
    return avatars_dir / f".{avatar_id}.{uuid.uuid4().hex[:8]}.partial"


def load_avatar(directory: Path) -> Avatar | None:
    """A completely prepared avatar from its directory, or None."""
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if meta.get("store_version") != STORE_VERSION:
        return None
    return Avatar(
        avatar_id=meta["avatar_id"],
        directory=directory,
        width=meta["width"],
        height=meta["height"],
        fps=meta["fps"],
        frame_count=meta["frame_count"],
        boxes=np.load(directory / BOXES_FILE),
        detected_frames=meta["detected_frames"],
        frame_codec=meta["frame_codec"],
    )


def detector_input(frame: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """A frame as face_detector takes it ([3, h, w], BGR minus mean) and its scale."""
    height, width = frame.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    chw = (frame.astype(np.float32) - S3FD_MEAN_BGR).transpose(2, 0, 1)
    return np.ascontiguousarray(chw), scale


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
        loop = asyncio.get_running_loop()
        require_input(video, STAGE, name)
        avatar_id = await loop.run_in_executor(pool, content_id, video)
        running = self._running.get(avatar_id)
        if running is None:
            cached = load_avatar(self.avatars_dir / avatar_id)
            if cached is not None:
                yield AvatarPrefix.of(cached)
                return
            info = await loop.run_in_executor(pool, probe_video, video, name)
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
        scratch = _partial_dir(self.avatars_dir, avatar_id)
        scratch.mkdir(parents=True)
        writer = FrameWriter(
            scratch, self.settings.avatar_frame_codec, self.settings.avatar_jpeg_quality
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
    scratch: Path
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
            shutil.rmtree(self.scratch, ignore_errors=True)  # gone already once renamed

    async def _prepare(self, pool: ThreadPoolExecutor) -> Avatar:
        settings, info, label = self.owner.settings, self.info, self.name or self.video.name
        frame_count, plan, tracked = await _Detection(self, pool).run()
        if not face_boxes.has_face(tracked).any():
            raise BadInput(
                STAGE,
                f"no face found in avatar {label}: the detector checked "
                f"{len(plan.detected)} of its {frame_count} frames and found none",
            )
        np.save(self.scratch / BOXES_FILE, tracked)
        meta = {
            "store_version": STORE_VERSION,
            "avatar_id": self.avatar_id,
            "source_name": label,
            "width": info.width,
            "height": info.height,
            "fps": info.fps,
            "frame_count": frame_count,
            "detected_frames": len(plan.detected),
            "frame_codec": settings.avatar_frame_codec,
        }
        (self.scratch / META_FILE).write_text(json.dumps(meta, indent=2))
        directory = self.owner.avatars_dir / self.avatar_id
        if directory.exists() and load_avatar(directory) is None:
            # A cache of an older STORE_VERSION, or a damaged one: complete caches only
            # appear by the rename below, so nobody is writing it. Moved aside as a
            # `.partial` (start-up removes those if this is cut short), then removed.
            with contextlib.suppress(OSError):
                stale = _partial_dir(self.owner.avatars_dir, self.avatar_id)
                directory.rename(stale)
                shutil.rmtree(stale, ignore_errors=True)
        with contextlib.suppress(OSError):
            # Fails when another process prepared the same avatar meanwhile; theirs is as
            # good as ours, and the scratch folder is removed either way.
            self.scratch.rename(directory)
        avatar = load_avatar(directory)
        if avatar is None:
            raise PipelineError(STAGE, f"the prepared avatar {label} could not be read back")
        return avatar


class _Detection:
    """Decoding and detection of one preparation, run together: frames stream into the
    store while batches of keyframes go to Triton; each answer may ask for more keyframes
    (the adaptive stride) and moves the published prefix on."""

    def __init__(self, work: _Preparation, pool: ThreadPoolExecutor) -> None:
        self.work, self.pool = work, pool
        settings = work.owner.settings
        self.settings = settings
        self.plan = KeyframePlan(
            settings.detect_every, settings.detect_stride_max, settings.detect_agree_iou
        )
        self.pending: list[tuple[int, np.ndarray, float]] = []
        self.in_flight: set[asyncio.Task[None]] = set()
        self.decoded = 0
        self.decoding = True
        self.rows: list[np.ndarray] = []
        self.published = 0
        self.settled = -1
        self.stored = work.writer.reader(work.info.width, work.info.height)
        self.group: asyncio.TaskGroup | None = None

    async def run(self) -> tuple[int, KeyframePlan, np.ndarray]:
        loop = asyncio.get_running_loop()
        work, settings, pool = self.work, self.settings, self.pool
        frames = read_video_frames(work.video, work.info.fps, work.name)
        last: np.ndarray | None = None
        try:
            async with asyncio.TaskGroup() as self.group:
                try:
                    while (
                        frame := await loop.run_in_executor(pool, next, frames, None)
                    ) is not None:
                        await loop.run_in_executor(pool, work.writer.append, frame)
                        self.decoded += 1
                        last = frame
                        for index in self.plan.grid(self.decoded, complete=False):
                            await self._queue(index, frame)
                        self._publish()
                        self._dispatch()
                        # Backpressure: decoding waits while detection lags far behind.
                        while (
                            len(self.pending) >= settings.detector_batch_size
                            and len(self.in_flight) >= settings.detect_in_flight
                        ):
                            await asyncio.wait(self.in_flight, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    # Serialised with a write still running in a pool thread by the file's lock.
                    work.writer.close()
                self.decoding = False
                # The last frame is always a keyframe, so interpolation reaches the end.
                if self.plan.grid(self.decoded, complete=True) and last is not None:
                    await self._queue(self.decoded - 1, last)
                self._publish()
                self._dispatch()
        finally:
            self.stored.close()
            # After a cancellation a pool thread may still be inside next(frames): closing
            # then raises "generator already executing" over the real error. That thread
            # holds the last reference, so the generator closes its container when the
            # thread lets go.
            with contextlib.suppress(ValueError):
                frames.close()
        if self.settled != self.decoded - 1:
            raise PipelineError(STAGE, "detection ended before every keyframe was settled")
        return self.decoded, self.plan, np.concatenate(self.rows)

    async def _read(self, index: int) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.stored.read, index)

    async def _queue(self, index: int, frame: np.ndarray) -> None:
        image, scale = await asyncio.get_running_loop().run_in_executor(
            self.pool, detector_input, frame, self.settings.detect_max_side
        )
        self.pending.append((index, image, scale))
        # Earliest first: they hold back the prefix that jobs are waiting for.
        self.pending.sort(key=lambda item: item[0])

    def _dispatch(self) -> None:
        """Sends full batches while requests may be added, and whatever is pending when the
        detector would otherwise idle or decoding has ended."""
        size, group = self.settings.detector_batch_size, self.group
        assert group is not None, "dispatch runs inside the task group"
        while (
            self.pending
            and len(self.in_flight) < self.settings.detect_in_flight
            and (len(self.pending) >= size or not self.in_flight or not self.decoding)
        ):
            batch, self.pending = self.pending[:size], self.pending[size:]
            task = group.create_task(self._detect(batch))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)

    async def _detect(self, batch: list[tuple[int, np.ndarray, float]]) -> None:
        settings = self.settings
        images = np.stack([image for _, image, _ in batch])
        result = await self.work.owner.client.infer(
            settings.detector_model, {"image": images}, ["boxes", "scores"], stage=STAGE
        )
        current = asyncio.current_task()
        if current is not None:
            self.in_flight.discard(current)
        midpoints = []
        for row, (index, _, scale) in enumerate(batch):
            faces = select_faces(
                result["boxes"][row],
                result["scores"][row],
                settings.face_score_threshold,
                settings.face_nms_iou,
            )
            best = np.array(faces[0].box) / scale if faces else no_face()
            midpoints.extend(self.plan.record(index, best))
        self._publish()
        for index in sorted(midpoints):
            await self._queue(index, await self._read(index))
        self._dispatch()

    def _publish(self) -> None:
        settled = self.plan.settled()
        ends = not self.decoding and settled == self.decoded - 1
        if settled > self.settled or (ends and self.published < self.decoded):
            self.settled = settled
            info = self.work.info
            keyframes, key_boxes = self.plan.keyframes(settled)
            rows = face_boxes.track_rows(
                keyframes, key_boxes, self.published, settled, ends, info.width, info.height
            )
            if len(rows):
                self.rows.append(rows)
                self.published += len(rows)
            self.work.prefix.publish(self.decoded, rows)
        else:
            self.work.prefix.publish(self.decoded, np.zeros((0, 4), np.int32))
