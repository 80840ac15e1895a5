"""Ten minutes of a session's clock: the video and audio tracks stay within a frame of it,
and of each other, at the end as at the start (issue 15: A/V drift <= 1 frame over 10
minutes).

Both tracks stamp what they carry from the session's one clock (orchestrator/live/tracks.py);
drift would come from arithmetic that accumulates (a chunk counted short, a frame index
that slips, a float sum). Ten real minutes is too long for a test, so the session runs on
an event loop whose clock jumps to its next timer whenever nothing is ready: every timer of
the ten minutes fires, in order, in seconds. The session is silent, so no inference is
asked for (its model client is never called) and only the stamping is under test.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.live.session import LiveModel, Session
from orchestrator.live.tracks import VIDEO_CLOCK, SessionAudioTrack, SessionVideoTrack
from orchestrator.pipeline.avatar_cache import load_avatar
from orchestrator.pipeline.composite import CompositeMode
from orchestrator.pipeline.mel import SAMPLE_RATE

MINUTES = 10
SECONDS = MINUTES * 60.0


class _JumpingSelector(selectors.BaseSelector):
    """A selector that, when nothing is ready and the loop would wait for a timer, moves
    the loop's clock to that timer instead of waiting."""

    def __init__(self) -> None:
        self._inner = selectors.DefaultSelector()
        self.now = 0.0

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._inner.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer at all: only a thread (the pool) can wake the loop
            return self._inner.select(None)
        # A frame read on the pool may still be running: the clock does not wait for it (a
        # read that misses its frame shows the previous picture; the stamps are the same).
        self.now += timeout
        return []

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.get_key(fileobj)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._inner.get_map()

    def close(self) -> None:
        self._inner.close()


class _VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._jumping = _JumpingSelector()
        super().__init__(self._jumping)

    def time(self) -> float:
        return self._jumping.now


class _NoModel:
    """A silent session never infers: a call would be a bug in the test's premise."""

    async def infer(self, *args: object, **kwargs: object) -> dict[str, np.ndarray]:
        raise AssertionError("a silent session asked for inference")


async def _stamps(avatar_cache: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """(video [clock s, stamp s] rows, audio rows, seconds per frame) over SECONDS."""
    avatar = load_avatar(avatar_cache)
    assert avatar is not None
    model = LiveModel(_NoModel(), "lipsync", 96, CompositeMode.REPLACE)  # type: ignore[arg-type]
    with ThreadPoolExecutor(2) as pool:
        session = Session("drift", avatar, model, pool, latency_s=0.4, max_queued_s=5.0)
        await session.start()

        async def read(track: Any, rate: int) -> list[tuple[float, float]]:
            rows = []
            while session.now() < SECONDS:
                media = await track.recv()
                rows.append((session.now(), media.pts / rate))
            return rows

        try:
            video, audio = await asyncio.gather(
                read(SessionVideoTrack(session), VIDEO_CLOCK),
                read(SessionAudioTrack(session), SAMPLE_RATE),
            )
        finally:
            await session.close()
        return np.array(video), np.array(audio), 1 / float(session.fps)


def test_video_and_audio_stay_within_a_frame_over_ten_minutes(avatar_cache: Path) -> None:
    loop = _VirtualClockLoop()
    try:
        video, audio, frame_s = loop.run_until_complete(_stamps(avatar_cache))
    finally:
        loop.close()
    assert video[-1, 0] >= SECONDS and audio[-1, 0] >= SECONDS
    # Every frame of the ten minutes was handed out, none twice: the stamps walk the clock.
    steps = np.diff(video[:, 1])
    assert np.allclose(steps, frame_s), (steps.min(), steps.max())
    assert video.shape[0] >= SECONDS / frame_s
    # Each track's stamp is within a frame of the clock when it is handed out, in the last
    # minute as in the first.
    for rows in (video, audio):
        lag = rows[:, 0] - rows[:, 1]
        assert lag.min() >= -1e-9 and lag.max() < frame_s, (lag.min(), lag.max())
    # And of each other: the audio stamped at each frame's moment is that frame's time.
    audio_at_frames = np.interp(video[:, 0], audio[:, 0], audio[:, 1])
    drift = audio_at_frames - video[:, 1]
    last_minute = video[:, 0] >= SECONDS - 60
    assert np.abs(drift).max() <= frame_s, np.abs(drift).max()
    assert abs(float(np.median(drift[last_minute]) - np.median(drift[:1500]))) < frame_s / 4
