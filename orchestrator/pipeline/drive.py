"""drive: which avatar frame and which mel window make each output frame.

Output frame i is driven by the mel window starting at i * 80 / fps (Wav2Lip's rule) and
shows avatar frame pingpong(i): the avatar is walked forwards, then backwards, and so on
when the audio is longer than the video, and cut when it is shorter. There are
ceil(audio_seconds * fps) output frames.
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import Executor
from fractions import Fraction

import numpy as np

from orchestrator.pipeline.avatar import Avatar
from orchestrator.pipeline.boxes import has_face
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


async def drive(
    avatar: Avatar,
    frames: FrameStore,
    mel: np.ndarray,
    fps: Fraction,
    total: int,
    out: asyncio.Queue[DrivenFrame | None],
    pool: Executor,
    clock: StageClock,
) -> None:
    faces = has_face(avatar.boxes)
    for index in range(total):
        avatar_index = pingpong(index, avatar.frame_count)
        frame = await clock.run(STAGE, pool, frames.read, avatar_index)
        box = tuple(int(v) for v in avatar.boxes[avatar_index]) if faces[avatar_index] else None
        window = mel_window(mel, index, float(fps))
        await out.put(DrivenFrame(index, avatar_index, frame, box, window))  # type: ignore[arg-type]
    await out.put(END)
