"""An avatar as far as it is prepared, so rendering can start before preparation ends.

Preparation publishes a growing prefix: frames [0, ready) have their pixels in the frame
store and their face boxes final (boxes.track_rows). The drive stage waits for the frame
it needs on an event that every publication sets, never by polling; once preparation
ends the frame count is known and the ping-pong walk may turn back. A failed preparation
raises its error in every waiter, so a job rendering the prefix fails with the avatar
stage's real cause.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from orchestrator.errors import PipelineError
from orchestrator.pipeline.avatar_cache import Avatar
from orchestrator.pipeline.frame_store import FrameStore

Listener = Callable[["AvatarPrefix"], None]


class AvatarPrefix:
    """Published state of one avatar's preparation (or of a cached avatar, complete)."""

    def __init__(
        self,
        avatar_id: str,
        width: int,
        height: int,
        fps: float,
        open_frames: Callable[[], FrameStore],
    ) -> None:
        self.avatar_id = avatar_id
        self.width, self.height, self.fps = width, height, fps
        self.frames_decoded = 0
        self._open_frames = open_frames
        self._boxes = np.full((256, 4), -1, np.int32)
        self._ready = 0
        self._avatar: Avatar | None = None
        self._error: PipelineError | None = None
        self._changed = asyncio.Event()
        self._listeners: list[Listener] = []

    @classmethod
    def of(cls, avatar: Avatar, boxes: np.ndarray | None = None) -> AvatarPrefix:
        """A prepared avatar as a complete prefix; `boxes` replaces its per-frame track
        (the face a job chose, faces.chosen_track)."""
        prefix = cls(avatar.avatar_id, avatar.width, avatar.height, avatar.fps, avatar.open_frames)
        prefix._boxes = avatar.boxes if boxes is None else boxes
        prefix._ready = avatar.frame_count
        prefix.frames_decoded = avatar.frame_count
        prefix._avatar = avatar
        return prefix

    @property
    def ready(self) -> int:
        """Frames with pixels stored and face boxes final: [0, ready)."""
        return self._ready

    @property
    def frame_count(self) -> int | None:
        """The avatar's frame count, once preparation has ended."""
        return self._avatar.frame_count if self._avatar is not None else None

    @property
    def avatar(self) -> Avatar | None:
        return self._avatar

    @property
    def error(self) -> PipelineError | None:
        return self._error

    @property
    def done(self) -> bool:
        return self._avatar is not None or self._error is not None

    def box(self, index: int) -> tuple[int, int, int, int] | None:
        """The face box of a ready frame; None where it has no face."""
        if index >= self._ready:
            raise PipelineError("avatar", f"the box of frame {index} is not final yet")
        x1, y1, x2, y2 = (int(v) for v in self._boxes[index])
        return (x1, y1, x2, y2) if x2 > x1 else None

    def open_frames(self) -> FrameStore:
        """The frame store: the finished one once prepared, else the growing one."""
        return self._avatar.open_frames() if self._avatar is not None else self._open_frames()

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Calls `listener` after every publication; returns what stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def changed(self) -> None:
        """Returns after the next publication; raises the preparation's error."""
        event = self._changed
        if self._error is None:
            await event.wait()
        if self._error is not None:
            raise self._error

    async def result(self) -> Avatar:
        """The prepared avatar, once preparation ends; its error if it fails."""
        while self._avatar is None:
            await self.changed()
        return self._avatar

    # Publication, by the preparation only.

    def publish(self, frames_decoded: int, rows: np.ndarray) -> None:
        """`rows`: newly final boxes, following the ones published before, of frames
        already in the store."""
        needed = self._ready + len(rows)
        if needed > len(self._boxes):
            grown = np.full((max(needed, 2 * len(self._boxes)), 4), -1, np.int32)
            grown[: self._ready] = self._boxes[: self._ready]
            self._boxes = grown
        self._boxes[self._ready : needed] = rows
        self._ready = needed
        self.frames_decoded = frames_decoded
        self._notify()

    def finish(self, avatar: Avatar) -> None:
        self._avatar = avatar
        self._boxes, self._ready = avatar.boxes, avatar.frame_count
        self.frames_decoded = avatar.frame_count
        self._notify()

    def fail(self, error: PipelineError) -> None:
        self._error = error
        self._notify()

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()
        for listener in list(self._listeners):
            listener(self)
