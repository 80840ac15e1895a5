"""Avatar preparation: frames/s of a new avatar, today's settings against the new ones,
the boxes' IoU against today's, and the time from submission to the first encoded frame.

    python -m benchmarks.avatar_prep [--triton-url HOST:PORT] [--sweep] [--repeat N]

"Today's" is the preparation before the adaptive stride: every 5th frame detected at
480 px, and rendering only once the whole avatar is prepared. Both run in this process on
the same avatars (the generated astronaut, 10 s at 512² and at 1280×720), each in a fresh
data directory so nothing is reused. `--sweep` adds the alternatives that were measured
to choose the defaults (docs/performance.md, "Avatar preparation").
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import triton_for_benchmark
from orchestrator.detection import iou
from orchestrator.pipeline.runner import Engine, Progress
from orchestrator.settings import Settings
from synthmedia.audio import voiced_speech, write_audio
from synthmedia.avatar import write_avatar_video

# The preparation before issue 10: a fixed stride of 5 at 480 px.
TODAY: dict[str, object] = {"detect_every": 5, "detect_stride_max": 5, "detect_max_side": 480}
NEW: dict[str, object] = {}  # the defaults
SWEEP: dict[str, dict[str, object]] = {
    "480 px, adaptive 4-16": {"detect_max_side": 480},
    "320 px, every 5th": {"detect_max_side": 320, "detect_every": 5, "detect_stride_max": 5},
    "256 px, every 5th": {"detect_max_side": 256, "detect_every": 5, "detect_stride_max": 5},
    "192 px, every 5th": {"detect_max_side": 192, "detect_every": 5, "detect_stride_max": 5},
    "192 px, adaptive 4-16": {"detect_max_side": 192},
    "256 px, adaptive 4-32": {"detect_stride_max": 32},
    "256 px, adaptive 4-16, batch 1": {"detector_batch_size": 1},
    "256 px, adaptive 4-16, batch 8": {"detector_batch_size": 8},
    "256 px, adaptive 4-16, batch 8 ×4": {"detector_batch_size": 8, "detect_in_flight": 4},
}
AVATARS = {"512x512": (512, 512), "1280x720": (1280, 720)}
AVATAR_SECONDS = 10.0
SPEECH_SECONDS = 4.0


@dataclass(frozen=True)
class Preparation:
    fps: float
    frames: int
    detected: int
    boxes: np.ndarray


def box_iou(boxes: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(min, mean) IoU of per-frame boxes against the reference's; a face missed or
    invented counts 0."""
    scores = [_agreement(a, b) for a, b in zip(boxes, reference, strict=True)]
    return min(scores), float(np.mean(scores))


def _agreement(box: np.ndarray, reference: np.ndarray) -> float:
    face, reference_face = bool(box[2] > box[0]), bool(reference[2] > reference[0])
    if face and reference_face:
        return iou(box, reference)
    return float(face == reference_face)


def _settings(url: str, data_dir: Path, overrides: Mapping[str, object]) -> Settings:
    # Today's settings keep up to 64 frames queued at 480 px: minutes on a busy CPU.
    base = Settings(triton_url=url, data_dir=data_dir, triton_request_timeout_s=600.0)
    return base.model_copy(update=overrides)


async def prepare(
    url: str, data_dir: Path, video: Path, overrides: Mapping[str, object]
) -> Preparation:
    """One new avatar prepared from scratch with these settings."""
    async with Engine(_settings(url, data_dir, overrides)) as engine:
        started = time.perf_counter()
        avatar = await engine.prepare_avatar(video)
        seconds = time.perf_counter() - started
    return Preparation(
        avatar.frame_count / seconds, avatar.frame_count, avatar.detected_frames, avatar.boxes
    )


async def first_frame(
    url: str,
    data_dir: Path,
    video: Path,
    audio: Path,
    overrides: Mapping[str, object],
    *,
    whole_first: bool,
) -> float:
    """Seconds from submission to the first encoded frame of a job with a new avatar;
    `whole_first` prepares the whole avatar before rendering, as before issue 10."""
    async with Engine(_settings(url, data_dir, overrides)) as engine:
        first: list[float] = []

        def on_progress(progress: Progress) -> None:
            if progress.frames_done >= 1 and not first:
                first.append(time.perf_counter())

        started = time.perf_counter()
        if whole_first:
            await engine.prepare_avatar(video)
        await engine.generate(video, audio, data_dir / "out.mp4", on_progress)
    return first[0] - started


async def _run(url: str, work: Path, sweep: bool, repeat: int) -> None:
    audio = work / "speech.wav"
    write_audio(audio, voiced_speech(SPEECH_SECONDS), 16000)
    runs = 0

    def fresh() -> Path:
        nonlocal runs
        runs += 1
        return work / f"data-{runs}"

    configs = {"today": TODAY, "new (defaults)": NEW} | (SWEEP if sweep else {})
    for label, size in AVATARS.items():
        video = work / f"avatar-{label}.mp4"
        write_avatar_video(video, seconds=AVATAR_SECONDS, fps=25, size=size)
        for attempt in range(repeat):
            print(
                f"\navatar {label}, {AVATAR_SECONDS:.0f} s at 25 fps (run {attempt + 1}/{repeat})"
            )
            print(
                f"{'settings':34} {'frames/s':>9} {'× today':>8} {'detected':>9} "
                f"{'IoU min':>8} {'mean':>6}"
            )
            reference: Preparation | None = None
            for name, overrides in configs.items():
                figures = await prepare(url, fresh(), video, overrides)
                reference = reference or figures
                low, mean = box_iou(figures.boxes, reference.boxes)
                print(
                    f"{name:34} {figures.fps:9.1f} {figures.fps / reference.fps:8.2f} "
                    f"{figures.detected:4d}/{figures.frames:<4d} {low:8.3f} {mean:6.3f}"
                )
            if label == "512x512":
                before = await first_frame(url, fresh(), video, audio, TODAY, whole_first=True)
                after = await first_frame(url, fresh(), video, audio, NEW, whole_first=False)
                print(
                    f"first encoded frame of a new avatar: today {before:.2f} s, new {after:.2f} s"
                )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triton-url", help="use this Triton instead of starting one")
    parser.add_argument("--sweep", action="store_true", help="also measure the alternatives")
    parser.add_argument("--repeat", type=int, default=1, help="runs per avatar")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dh-avatar-prep-") as scratch:
        work = Path(scratch)
        with triton_for_benchmark(work, args.triton_url) as (grpc_url, _):
            asyncio.run(_run(grpc_url, work, args.sweep, args.repeat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
