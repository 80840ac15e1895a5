"""drive: which avatar frame and which mel window make each output frame.

Output frame i is driven by the mel window starting at i * 80 / fps (Wav2Lip's rule) and
shows avatar frame pingpong(i): the avatar is walked forwards, then backwards, and so on
when the audio is longer than the video, and cut when it is shorter. There are
ceil(audio_seconds * fps) output frames. Driving may start while the avatar is still
being prepared (avatar_prefix.py): it waits for each frame it needs.
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import Executor
from fractions import Fraction

import numpy as np

from orchestrator.pipeline.avatar_prefix import AvatarPrefix
from orchestrator.pipeline.frame_store import FrameStore
from orchestrator.pipeline.mel import SAMPLE_RATE, mel_window
from orchestrator.pipeline.stages import END, DrivenFrame, StageClock

STAGE = "drive"


def output_fps(avatar_fps: float, requested: float | None) -> Fraction:
    """The output rate: the requested one or the avatar's, as an exact fraction (29.97
    becomes 30000/1001) so that frame times and the encoder's time base are exact."""
    return Fraction(requested or avatar_fps).limit_denominator(1001)


def output_frame_count(audio_samples: int, fps: Fraction) -> int:
    """ceil(audio_seconds * fps), computed exactly: 10 s at 25 fps is 250 frames, not 251."""
    return math.ceil(Fraction(audio_samples, SAMPLE_RATE) * fps)


def pingpong(index: int, frame_count: int) -> int:
    """The avatar frame shown at output frame `index`: 0, 1, …, n-1, n-2, …, 1, 0, 1, …"""
    if frame_count <= 1:
        return 0
    period = 2 * frame_count - 2
    phase = index % period
    return phase if phase < frame_count else period - phase


def source_frame(index: int, ready: int, frame_count: int | None) -> int | None:
    """The avatar frame for output frame `index` while the avatar may still be prepared:
    `ready` frames are prepared so far, `frame_count` is known once all are. The walk only
    turns back once the forward pass has reached the end; None: wait for more frames."""
    if frame_count is not None:
        return pingpong(index, frame_count)
    return index if index < ready else None


async def drive(
    avatar: AvatarPrefix,
    frames: FrameStore,
    mel: np.ndarray,
    fps: Fraction,
    total: int,
    out: asyncio.Queue[DrivenFrame | None],
    pool: Executor,
    clock: StageClock,
) -> None:
    """`avatar` may still be being prepared: each frame is waited for until it is."""
    for index in range(total):
        while (avatar_index := source_frame(index, avatar.ready, avatar.frame_count)) is None:
            await avatar.changed()
        frame = await clock.run(STAGE, pool, frames.read, avatar_index)
        window = mel_window(mel, index, float(fps))
        await out.put(DrivenFrame(index, avatar_index, frame, avatar.box(avatar_index), window))
    await out.put(END)
