"""detect: the face boxes of an avatar's frames, while its video is decoded into the store.

Decoding and detection run together: frames stream into the frame store while batches of
keyframes (keyframes.py: an adaptive stride) scaled down to DH_DETECT_MAX_SIDE go to
`face_detector` on Triton; each answer may ask for more keyframes and moves the published
prefix (avatar_prefix.py) on, so jobs render the frames already final while later ones
are still being detected. Boxes come out of the detector's outputs by score and NMS
(orchestrator/detection.py) and are interpolated, padded and smoothed (boxes.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from orchestrator.blocking import run_blocking
from orchestrator.detection import select_faces
from orchestrator.errors import PipelineError
from orchestrator.pipeline import boxes as face_boxes
from orchestrator.pipeline.avatar_prefix import AvatarPrefix
from orchestrator.pipeline.decode import VideoInfo, read_video_frames
from orchestrator.pipeline.faces import KeyframeFaces, largest
from orchestrator.pipeline.frame_store import FrameWriter
from orchestrator.pipeline.keyframes import KeyframePlan, no_face
from orchestrator.settings import Settings
from orchestrator.triton import TritonClient

STAGE = "avatar"
# S3FD's preprocessing: BGR minus these per-channel means (the network's training data).
S3FD_MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)


@dataclass(frozen=True)
class DetectedAvatar:
    """What detection found: the frame count, every frame's tracked box of the largest
    face, and every face of each keyframe (for a job that chooses another)."""

    frame_count: int
    detected_frames: int  # frames the detector looked at
    boxes: np.ndarray  # [frame_count, 4] int32, -1 rows where no face was found
    faces: KeyframeFaces


def detector_input(frame: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """A frame as face_detector takes it ([3, h, w], BGR minus mean) and its scale."""
    height, width = frame.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    chw = (frame.astype(np.float32) - S3FD_MEAN_BGR).transpose(2, 0, 1)
    return np.ascontiguousarray(chw), scale


async def detect_avatar(
    video: Path,
    info: VideoInfo,
    name: str | None,
    writer: FrameWriter,
    prefix: AvatarPrefix,
    client: TritonClient,
    settings: Settings,
    pool: Executor,
) -> DetectedAvatar:
    """Decodes `video` into `writer` (closed at the end) and detects its faces, publishing
    each newly final run of boxes on `prefix`. `name` is the video as the user knows it."""
    return await _Detection(video, info, name, writer, prefix, client, settings, pool).run()


class _Detection:
    """Decoding and detection of one preparation, run together: frames stream into the
    store while batches of keyframes go to Triton; each answer may ask for more keyframes
    (the adaptive stride) and moves the published prefix on."""

    def __init__(
        self,
        video: Path,
        info: VideoInfo,
        name: str | None,
        writer: FrameWriter,
        prefix: AvatarPrefix,
        client: TritonClient,
        settings: Settings,
        pool: Executor,
    ) -> None:
        self.video, self.info, self.name = video, info, name
        self.writer, self.prefix, self.client = writer, prefix, client
        self.settings, self.pool = settings, pool
        self.plan = KeyframePlan(
            settings.detect_every, settings.detect_stride_max, settings.detect_agree_iou
        )
        self.pending: list[tuple[int, np.ndarray, float]] = []
        self.in_flight: set[asyncio.Task[None]] = set()
        self.decoded = 0
        self.decoding = True
        self.rows: list[np.ndarray] = []
        self.faces: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # keyframe: boxes, scores
        self.published = 0
        self.settled = -1
        self.stored = writer.reader(info.width, info.height)
        self.group: asyncio.TaskGroup | None = None

    async def run(self) -> DetectedAvatar:
        settings, pool = self.settings, self.pool
        frames = read_video_frames(self.video, self.info.fps, self.name)
        last: np.ndarray | None = None
        try:
            async with asyncio.TaskGroup() as self.group:
                try:
                    while (frame := await run_blocking(pool, next, frames, None)) is not None:
                        await run_blocking(pool, self.writer.append, frame)
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
                    self.writer.close()
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
        keyframes = sorted(self.faces)
        faces = KeyframeFaces(
            keyframes, [self.faces[k][0] for k in keyframes], [self.faces[k][1] for k in keyframes]
        )
        return DetectedAvatar(
            self.decoded, len(self.plan.detected), np.concatenate(self.rows), faces
        )

    async def _read(self, index: int) -> np.ndarray:
        return await run_blocking(self.pool, self.stored.read, index)

    async def _queue(self, index: int, frame: np.ndarray) -> None:
        image, scale = await run_blocking(
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
        result = await self.client.infer(
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
            found = np.array([face.box for face in faces], np.float64).reshape(-1, 4) / scale
            self.faces[index] = (found, np.array([face.score for face in faces], np.float64))
            # The default track follows the largest face: the speaker nearest the camera.
            best = largest(found)
            box = no_face() if best is None else best
            midpoints.extend(self.plan.record(index, box, found))
        self._publish()
        for index in sorted(midpoints):
            await self._queue(index, await self._read(index))
        self._dispatch()

    def _publish(self) -> None:
        settled = self.plan.settled()
        ends = not self.decoding and settled == self.decoded - 1
        if settled > self.settled or (ends and self.published < self.decoded):
            self.settled = settled
            info = self.info
            keyframes, key_boxes = self.plan.keyframes(settled)
            rows = face_boxes.track_rows(
                keyframes, key_boxes, self.published, settled, ends, info.width, info.height
            )
            if len(rows):
                self.rows.append(rows)
                self.published += len(rows)
            self.prefix.publish(self.decoded, rows)
        else:
            self.prefix.publish(self.decoded, np.zeros((0, 4), np.int32))
