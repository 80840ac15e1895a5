"""`Engine.generate` end to end against the real Triton, outputs decoded again with PyAV."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest

from orchestrator.pipeline.drive import pingpong
from orchestrator.pipeline.mel import HOP, MEL_FRAMES_PER_SECOND, MEL_WINDOW, SAMPLE_RATE
from orchestrator.pipeline.runner import Engine, JobResult
from synthmedia.audio import bursts, write_audio
from tests.pipeline.conftest import AVATAR_FPS, AVATAR_SIZE
from tests.pipeline.frames import avatar_frames, decode_frames, psnr, region_mean

AUDIO_SECONDS = 4.0
BURST_TIMES = (0.8, 2.0, 3.2)
BURST_SECONDS = 0.1
# The reference model darkens rows 0.62-0.90 and columns 0.28-0.72 of the face crop; the
# middle of that region, away from the feathered edge, is where the tests look.
MOUTH_ROWS, MOUTH_COLS = (0.68, 0.86), (0.36, 0.64)
# The STFT window (800 samples) spreads a burst over this many mel frames each side.
STFT_SPREAD = 800 // 2 // HOP


@dataclass(frozen=True)
class SyncJob:
    result: JobResult
    frames: list[np.ndarray]
    avatar_frames: list[np.ndarray]


def _window_start(frame: int) -> float:
    return math.floor(frame * MEL_FRAMES_PER_SECOND / AVATAR_FPS)


def driven_frames(margin: float) -> set[int]:
    """Frames whose mel window reaches a burst (its STFT spread plus `margin` mel frames)."""
    touched = set()
    total = math.ceil(AUDIO_SECONDS * AVATAR_FPS)
    for t in BURST_TIMES:
        first = t * MEL_FRAMES_PER_SECOND - STFT_SPREAD - margin
        last = (t + BURST_SECONDS) * MEL_FRAMES_PER_SECOND + STFT_SPREAD + margin
        touched |= {
            i
            for i in range(total)
            if _window_start(i) < last and _window_start(i) + MEL_WINDOW > first
        }
    return touched


def fully_driven_frames() -> set[int]:
    """Frames whose mel window holds a whole burst."""
    whole = set()
    for t in BURST_TIMES:
        start, end = t * MEL_FRAMES_PER_SECOND, (t + BURST_SECONDS) * MEL_FRAMES_PER_SECOND
        whole |= {
            i
            for i in range(math.ceil(AUDIO_SECONDS * AVATAR_FPS))
            if _window_start(i) <= start and _window_start(i) + MEL_WINDOW >= end
        }
    return whole


@pytest.fixture(scope="module")
async def sync_job(engine: Engine, short_avatar: Path, media: Path) -> SyncJob:
    audio = media / "bursts.wav"
    write_audio(audio, bursts(AUDIO_SECONDS, list(BURST_TIMES), BURST_SECONDS), SAMPLE_RATE)
    result = await engine.generate(short_avatar, audio, media / "sync.mp4")
    return SyncJob(result, decode_frames(result.output), avatar_frames(result.avatar))


def test_bursts_darken_the_mouth_only_in_the_frames_they_drive(sync_job: SyncJob) -> None:
    result = sync_job.result
    assert result.avatar.frame_count < result.frames, "the avatar is shorter than the audio"
    ratios = []
    for i, frame in enumerate(sync_job.frames):
        source = pingpong(i, result.avatar.frame_count)
        box = result.avatar.boxes[source]
        ratios.append(
            region_mean(frame, box, MOUTH_ROWS, MOUTH_COLS)
            / region_mean(sync_job.avatar_frames[source], box, MOUTH_ROWS, MOUTH_COLS)
        )
    dark = {i for i, r in enumerate(ratios) if r < 0.9}
    assert fully_driven_frames() <= dark, (
        f"undarkened driven frames: {sorted(fully_driven_frames() - dark)}"
    )
    assert dark <= driven_frames(margin=1), (
        f"darkened frames no burst drives: {sorted(dark - driven_frames(1))}"
    )
    quiet = set(range(len(ratios))) - driven_frames(margin=2)
    assert min(ratios[i] for i in quiet) > 0.96


def test_pixels_outside_the_face_box_match_the_avatar(sync_job: SyncJob) -> None:
    result = sync_job.result
    outside_out, outside_in = [], []
    for i, frame in enumerate(sync_job.frames):
        source = pingpong(i, result.avatar.frame_count)
        x1, y1, x2, y2 = result.avatar.boxes[source]
        mask = np.ones(frame.shape[:2], bool)
        mask[y1:y2, x1:x2] = False
        outside_out.append(frame[mask])
        outside_in.append(sync_job.avatar_frames[source][mask])
    assert psnr(np.concatenate(outside_out), np.concatenate(outside_in)) >= 35.0


def test_output_rate_duration_and_streams(sync_job: SyncJob) -> None:
    result = sync_job.result
    assert result.frames == math.ceil(AUDIO_SECONDS * AVATAR_FPS) == len(sync_job.frames)
    with av.open(str(result.output)) as container:
        video, audio = container.streams.video, container.streams.audio
        assert len(video) == 1 and len(audio) == 1
        assert video[0].codec_context.name == "h264"
        assert video[0].codec_context.pix_fmt == "yuv420p"
        assert (video[0].width, video[0].height) == AVATAR_SIZE
        assert video[0].average_rate == AVATAR_FPS
        assert audio[0].codec_context.name == "aac"
        audio_seconds = float(audio[0].duration * audio[0].time_base)
        video_seconds = float(video[0].duration * video[0].time_base)
    assert abs(audio_seconds - AUDIO_SECONDS) < 1 / AVATAR_FPS
    assert abs(video_seconds - AUDIO_SECONDS) < 1 / AVATAR_FPS
    assert result.frames_without_face == 0
    assert set(result.stage_seconds) == {
        "decode",
        "avatar",
        "drive",
        "infer",
        "composite",
        "encode",
    }


def test_faststart_puts_the_index_before_the_media(sync_job: SyncJob) -> None:
    data = sync_job.result.output.read_bytes()
    assert 0 <= data.find(b"moov") < data.find(b"mdat")
