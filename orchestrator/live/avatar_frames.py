"""The avatar pictures live sessions play, decoded once and shared by every session of an
avatar, within DH_LIVE_FRAME_CACHE_MB.

A session walks its avatar's frames forwards and backwards for as long as it lives, 25 a
second: reading each from the frame store means a pread, a JPEG decode and a trip to a
pool thread and back per frame and session. Kept decoded, a frame is taken on the event
loop with a dictionary lookup. The cache fills until the budget is spent and then keeps
what it holds: the walk visits every frame in turn, so evicting the least recently used
would evict exactly the frame needed soonest. An avatar's frames are freed when its last
session ends.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from orchestrator.pipeline.avatar_cache import Avatar
from orchestrator.pipeline.frame_store import FrameStore

MIB = 1024 * 1024


class FramesClosed(RuntimeError):
    """A read after the session's frames were closed (it ended while the read waited)."""


@dataclass
class _Shared:
    avatar_id: str
    users: int = 0
    frames: dict[int, np.ndarray] = field(default_factory=dict)
    nbytes: int = 0


class FrameCache:
    """Decoded avatar frames of one process's sessions; thread-safe (pool threads fill it)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        self._avatars: dict[str, _Shared] = {}
        self._used = 0

    @property
    def used_bytes(self) -> int:
        return self._used

    def open(self, avatar: Avatar) -> AvatarFrames:
        """A session's view of `avatar`'s frames; close it when the session ends."""
        with self._lock:
            shared = self._avatars.setdefault(avatar.avatar_id, _Shared(avatar.avatar_id))
            shared.users += 1
        return AvatarFrames(self, avatar, shared)

    def _keep(self, shared: _Shared, index: int, frame: np.ndarray) -> None:
        with self._lock:
            if index in shared.frames or self._used + frame.nbytes > self.budget_bytes:
                return
            if self._avatars.get(shared.avatar_id) is not shared:
                return  # its last session ended meanwhile
            frame.flags.writeable = False  # shared by sessions: nobody draws on it
            shared.frames[index] = frame
            shared.nbytes += frame.nbytes
            self._used += frame.nbytes

    def _release(self, shared: _Shared) -> None:
        with self._lock:
            shared.users -= 1
            if shared.users == 0 and self._avatars.get(shared.avatar_id) is shared:
                del self._avatars[shared.avatar_id]
                self._used -= shared.nbytes


class AvatarFrames:
    """One session's frames of its avatar: `cached` on the loop, `read` on a pool thread."""

    def __init__(self, cache: FrameCache, avatar: Avatar, shared: _Shared) -> None:
        self._cache = cache
        self._shared = shared
        self._store: FrameStore = avatar.open_frames()
        self._lock = threading.Lock()
        self._closed = False

    def cached(self, index: int) -> np.ndarray | None:
        return self._shared.frames.get(index)

    def read(self, index: int) -> np.ndarray:
        """Frame `index` (blocking: from the store unless cached); FramesClosed once closed."""
        frame = self._shared.frames.get(index)
        if frame is not None:
            return frame
        # close() takes the lock too: no read ever meets a closed (or reused) descriptor.
        with self._lock:
            if self._closed:
                raise FramesClosed("the session's avatar frames are closed")
            frame = self._store.read(index)
        self._cache._keep(self._shared, index, frame)
        return frame

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._store.close()
        self._cache._release(self._shared)
