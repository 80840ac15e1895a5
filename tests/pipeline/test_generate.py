"""`Engine.generate` end to end against the real Triton, outputs decoded again with PyAV."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest

from modelkit import talking
from orchestrator.pipeline.drive import pingpong
from orchestrator.pipeline.mel import HOP, MEL_FRAMES_PER_SECOND, SAMPLE_RATE
from orchestrator.pipeline.runner import Engine, JobResult
from synthmedia.__main__ import DEMO_SIZE
from synthmedia.audio import bursts, write_audio
from synthmedia.avatar import write_avatar_video
from tests.pipeline.conftest import AVATAR_FPS, AVATAR_SIZE
from tests.pipeline.frames import avatar_frames, decode_frames, psnr, region_mean
from tests.unit.test_composite import edge_gradient

AUDIO_SECONDS = 4.0
BURST_TIMES = (0.8, 2.0, 3.2)
BURST_SECONDS = 0.1
SILENT_SECONDS = 2.0
# The talking reference model opens a dark gap between the lips, from the mouth line down
# by up to JAW_DROP of the crop, widest in the middle: that is where the tests look.
MOUTH_ROWS = (talking.MOUTH_LINE, talking.MOUTH_LINE + talking.JAW_DROP)
MOUTH_COLS = (0.5 - talking.LIPS_HALF_WIDTH / 2, 0.5 + talking.LIPS_HALF_WIDTH / 2)
# The STFT window (800 samples) spreads a burst over this many mel frames each side.
STFT_SPREAD = 800 // 2 // HOP


@dataclass(frozen=True)
class SyncJob:
    result: JobResult
    frames: list[np.ndarray]
    avatar_frames: list[np.ndarray]

    def source_box(self, index: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """The avatar frame output frame `index` was made from, and its face box."""
        source = pingpong(index, self.result.avatar.frame_count)
        x1, y1, x2, y2 = (int(v) for v in self.result.avatar.boxes[source])
        return self.avatar_frames[source], (x1, y1, x2, y2)


def _head(frame: int) -> tuple[float, float]:
    """The mel frames [start, stop) whose loudness opens the mouth in output `frame`: the
    head of its window (modelkit.talking.ENERGY_MEL_FRAMES)."""
    start = math.floor(frame * MEL_FRAMES_PER_SECOND / AVATAR_FPS)
    return start, start + talking.ENERGY_MEL_FRAMES


def driven_frames(margin: float) -> set[int]:
    """Frames whose window head reaches a burst (its STFT spread plus `margin` mel frames)."""
    touched = set()
    total = math.ceil(AUDIO_SECONDS * AVATAR_FPS)
    for t in BURST_TIMES:
        first = t * MEL_FRAMES_PER_SECOND - STFT_SPREAD - margin
        last = (t + BURST_SECONDS) * MEL_FRAMES_PER_SECOND + STFT_SPREAD + margin
        touched |= {i for i in range(total) if _head(i)[0] < last and _head(i)[1] > first}
    return touched


def fully_driven_frames() -> set[int]:
    """Frames whose window head lies wholly inside a burst."""
    whole = set()
    for t in BURST_TIMES:
        start, end = t * MEL_FRAMES_PER_SECOND, (t + BURST_SECONDS) * MEL_FRAMES_PER_SECOND
        whole |= {
            i
            for i in range(math.ceil(AUDIO_SECONDS * AVATAR_FPS))
            if _head(i)[0] >= start and _head(i)[1] <= end
        }
    return whole


@pytest.fixture(scope="module")
async def sync_job(engine: Engine, short_avatar: Path, media: Path) -> SyncJob:
    audio = media / "bursts.wav"
    write_audio(audio, bursts(AUDIO_SECONDS, list(BURST_TIMES), BURST_SECONDS), SAMPLE_RATE)
    result = await engine.generate(short_avatar, audio, media / "sync.mp4")
    return SyncJob(result, decode_frames(result.output), avatar_frames(result.avatar))


@pytest.fixture(scope="module")
async def silent_job(engine: Engine, media: Path) -> SyncJob:
    # The demo's size: its face box is larger than the model's 96 px crop, so pasting the
    # crop back would visibly blur it; the test must be able to see that.
    avatar = media / "demo_sized_avatar.mp4"
    write_avatar_video(avatar, seconds=1.2, fps=AVATAR_FPS, size=DEMO_SIZE)
    audio = media / "silence.wav"
    write_audio(audio, np.zeros(round(SILENT_SECONDS * SAMPLE_RATE), np.float32), SAMPLE_RATE)
    result = await engine.generate(avatar, audio, media / "silent.mp4")
    return SyncJob(result, decode_frames(result.output), avatar_frames(result.avatar))


def _mouth_ratios(job: SyncJob) -> list[float]:
    """Per output frame: the mouth opening's mean brightness over the avatar's."""
    ratios = []
    for i, frame in enumerate(job.frames):
        source, box = job.source_box(i)
        ratios.append(
            region_mean(frame, np.asarray(box), MOUTH_ROWS, MOUTH_COLS)
            / region_mean(source, np.asarray(box), MOUTH_ROWS, MOUTH_COLS)
        )
    return ratios


def test_bursts_open_the_mouth_only_in_the_frames_they_drive(sync_job: SyncJob) -> None:
    result = sync_job.result
    assert result.avatar.frame_count < result.frames, "the avatar is shorter than the audio"
    ratios = _mouth_ratios(sync_job)
    dark = {i for i, r in enumerate(ratios) if r < 0.9}
    assert {round(t * AVATAR_FPS) for t in BURST_TIMES} <= fully_driven_frames()
    assert fully_driven_frames() <= dark, (
        f"closed mouths in driven frames: {sorted(fully_driven_frames() - dark)}"
    )
    assert dark <= driven_frames(margin=1), (
        f"open mouths in frames no burst drives: {sorted(dark - driven_frames(1))}"
    )
    quiet = set(range(len(ratios))) - driven_frames(margin=2)
    assert min(ratios[i] for i in quiet) > 0.96


def test_silence_leaves_the_face_as_it_was(silent_job: SyncJob) -> None:
    """Inside the box the output is the avatar within codec noise (no blur, no box): as
    close to it as the pixels outside the box, which nothing touches."""
    inside_out, inside_in, outside_out, outside_in = [], [], [], []
    for i, frame in enumerate(silent_job.frames):
        source, (x1, y1, x2, y2) = silent_job.source_box(i)
        inside = np.zeros(frame.shape[:2], bool)
        inside[y1:y2, x1:x2] = True
        inside_out.append(frame[inside])
        inside_in.append(source[inside])
        outside_out.append(frame[~inside])
        outside_in.append(source[~inside])
    assert len(silent_job.frames) == math.ceil(SILENT_SECONDS * AVATAR_FPS)
    inside_psnr = psnr(np.concatenate(inside_out), np.concatenate(inside_in))
    outside_psnr = psnr(np.concatenate(outside_out), np.concatenate(outside_in))
    # libx264 at CRF 20 in yuv420p leaves ~36 dB on untouched pixels of this clip; a box
    # pasted back from the 96 px crop measures ~2-3 dB below that.
    assert inside_psnr >= outside_psnr - 0.75, (inside_psnr, outside_psnr)
    assert inside_psnr >= 35.0


def test_an_open_mouth_leaves_no_seam_at_the_box_edge(sync_job: SyncJob) -> None:
    opened = sorted(fully_driven_frames())
    out_steps, in_steps = [], []
    for i in opened:
        source, box = sync_job.source_box(i)
        out_steps.append(edge_gradient(sync_job.frames[i], box))
        in_steps.append(edge_gradient(source, box))
    assert np.mean(out_steps) <= 1.2 * np.mean(in_steps) + 0.5


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
        # PyAV types a stream's duration and time base as optional (unknown in some files).
        assert audio[0].duration is not None and audio[0].time_base is not None
        assert video[0].duration is not None and video[0].time_base is not None
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
