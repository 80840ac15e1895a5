"""avatar: face boxes for every avatar frame, from face_detector on Triton, cached.

An avatar is prepared once: its frames are decoded into a frame store (frame_store.py: the
drive stage can walk them forwards and backwards without decoding again or holding them
in memory) and face boxes are detected on every k-th frame,
interpolated, padded and smoothed. Everything is kept under the data directory keyed by
the video's content hash: a second job with the same video sends no detection request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from orchestrator.detection import select_faces
from orchestrator.errors import BadInput
from orchestrator.pipeline import boxes as face_boxes
from orchestrator.pipeline.decode import (
    VideoInfo,
    probe_video,
    read_video_frames,
    require_input,
)
from orchestrator.pipeline.frame_store import FrameCodec, FrameStore, FrameWriter
from orchestrator.settings import Settings
from orchestrator.triton import TritonClient

STAGE = "avatar"
# S3FD's preprocessing: BGR minus these per-channel means (the network's training data).
S3FD_MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)
BOXES_FILE = "boxes.npy"
META_FILE = "meta.json"
HASH_CHUNK = 1 << 20
# Bump when the store's layout or the box maths change, so old caches are not reused.
STORE_VERSION = 2


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


async def prepare_avatar(
    video: Path,
    avatars_dir: Path,
    client: TritonClient,
    settings: Settings,
    pool: Executor,
    on_frame: Callable[[int], None] | None = None,
    name: str | None = None,
) -> Avatar:
    """The prepared avatar for `video`, from the cache or by decoding and detecting now.
    `name` is the video as the user knows it, for messages."""
    loop = asyncio.get_running_loop()
    require_input(video, "avatar", name)
    avatar_id = await loop.run_in_executor(pool, content_id, video)
    directory = avatars_dir / avatar_id
    cached = load_avatar(directory)
    if cached is not None:
        return cached
    info = await loop.run_in_executor(pool, probe_video, video, name)
    scratch = avatars_dir / f".{avatar_id}.{uuid.uuid4().hex[:8]}.partial"
    scratch.mkdir(parents=True)
    try:
        frame_count, keyframes, key_boxes = await _decode_and_detect(
            video, info, scratch, client, settings, pool, on_frame, name
        )
        if not face_boxes.has_face(key_boxes).any():
            raise BadInput(
                STAGE,
                f"no face found in avatar {name or video.name}: the detector checked "
                f"{len(keyframes)} of its {frame_count} frames (every "
                f"{settings.detect_every}th) and found none",
            )
        tracked = face_boxes.track(keyframes, key_boxes, frame_count, info.width, info.height)
        np.save(scratch / BOXES_FILE, tracked)
        meta = {
            "store_version": STORE_VERSION,
            "avatar_id": avatar_id,
            "source_name": name or video.name,
            "width": info.width,
            "height": info.height,
            "fps": info.fps,
            "frame_count": frame_count,
            "detected_frames": len(keyframes),
            "frame_codec": settings.avatar_frame_codec,
        }
        (scratch / META_FILE).write_text(json.dumps(meta, indent=2))
        try:
            scratch.rename(directory)
        except OSError:
            # Another job prepared the same avatar meanwhile; theirs is as good as ours.
            shutil.rmtree(scratch, ignore_errors=True)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    avatar = load_avatar(directory)
    assert avatar is not None, f"{directory} was just written"
    return avatar


async def _decode_and_detect(
    video: Path,
    info: VideoInfo,
    scratch: Path,
    client: TritonClient,
    settings: Settings,
    pool: Executor,
    on_frame: Callable[[int], None] | None,
    name: str | None,
) -> tuple[int, list[int], np.ndarray]:
    """Streams the frames into the store while detection batches go to Triton."""
    loop = asyncio.get_running_loop()
    keyframes: list[int] = []
    pending: list[tuple[int, np.ndarray, float]] = []
    detections: dict[int, np.ndarray] = {}
    in_flight: set[asyncio.Task[None]] = set()

    async def detect(batch: list[tuple[int, np.ndarray, float]]) -> None:
        images = np.stack([image for _, image, _ in batch])
        result = await client.infer(
            settings.detector_model, {"image": images}, ["boxes", "scores"], stage=STAGE
        )
        for row, (index, _, scale) in enumerate(batch):
            faces = select_faces(
                result["boxes"][row],
                result["scores"][row],
                settings.face_score_threshold,
                settings.face_nms_iou,
            )
            best = np.array(faces[0].box) / scale if faces else np.full(4, face_boxes.NO_FACE)
            detections[index] = best

    frames = read_video_frames(video, info.fps, name)
    count = 0
    last: tuple[int, np.ndarray] | None = None
    try:
        async with asyncio.TaskGroup() as group:

            async def flush() -> None:
                nonlocal pending
                if not pending:
                    return
                # Backpressure: decoding waits while detection lags behind.
                while len(in_flight) >= settings.triton_max_in_flight:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                task = group.create_task(detect(pending))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                pending = []

            store = FrameWriter(scratch, settings.avatar_frame_codec, settings.avatar_jpeg_quality)
            try:
                while (frame := await loop.run_in_executor(pool, next, frames, None)) is not None:
                    await loop.run_in_executor(pool, store.append, frame)
                    if count % settings.detect_every == 0:
                        pending.append((count, *await _detector_input(loop, pool, frame, settings)))
                        keyframes.append(count)
                        if len(pending) == settings.detector_batch_size:
                            await flush()
                    last = (count, frame)
                    count += 1
                    if on_frame:
                        on_frame(count)
            finally:
                # Serialised with a write still running in a pool thread by the file's lock.
                store.close()
            # The last frame is always a keyframe so that interpolation reaches the end.
            if last is not None and keyframes[-1] != last[0]:
                pending.append((last[0], *await _detector_input(loop, pool, last[1], settings)))
                keyframes.append(last[0])
            await flush()
    finally:
        # After a cancellation a pool thread may still be inside next(frames): closing then
        # raises "generator already executing" over the real error. That thread holds the
        # last reference, so the generator closes its container when the thread lets go.
        with contextlib.suppress(ValueError):
            frames.close()
    key_boxes = [detections[k] for k in keyframes]
    return count, keyframes, np.array(key_boxes, np.float64).reshape(-1, 4)


async def _detector_input(
    loop: asyncio.AbstractEventLoop, pool: Executor, frame: np.ndarray, settings: Settings
) -> tuple[np.ndarray, float]:
    return await loop.run_in_executor(pool, detector_input, frame, settings.detect_max_side)
