"""Rendering starts while a new avatar is still being prepared, and renders the same
frames with the same boxes as from the prepared cache; jobs with the same new avatar share
one preparation.

Detection requests past the first few are held until the job has encoded a frame: a
pipeline that waited for the whole avatar could never finish, so finishing proves the
order by events, not by timing.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from orchestrator.pipeline import runner
from orchestrator.pipeline.avatar_cache import content_id
from orchestrator.pipeline.avatar_prefix import AvatarPrefix
from orchestrator.pipeline.drive import drive
from orchestrator.pipeline.frame_store import FrameStore
from orchestrator.pipeline.runner import Engine, JobResult, Progress
from orchestrator.pipeline.stages import DrivenFrame, StageClock
from orchestrator.triton import TritonClient
from synthmedia.audio import voiced_speech, write_audio
from synthmedia.avatar import write_avatar_video
from tests.conftest import TritonAddress
from tests.pipeline.conftest import engine_settings
from tests.pipeline.frames import decode_frames

# Settings that make the first output frame need few detections: 4-frame lipsync
# batches need avatar frames 0-5, whose boxes are final once keyframes 0 and 8 agree
# (or, if they do not, once the midpoint 4 is detected too).
STREAMING = {"detect_stride_max": 8, "detector_batch_size": 1}
LIPSYNC_BATCH = 4
# Requests let through before the hold: keyframes 0, 8 and a possible midpoint.
LET_THROUGH = 3
# Bounds a job that would wait forever if rendering waited for the whole avatar.
JOB_DEADLINE_S = 240.0


class HeldDetector(TritonClient):
    """The real Triton, with face_detector requests past the first `let_through` held
    until `release` is set."""

    def __init__(self, url: str, let_through: int) -> None:
        super().__init__(url)
        self.let_through = let_through
        self.release = asyncio.Event()
        self.detector_requests = 0

    async def infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        outputs: list[str],
        stage: str = "infer",
    ) -> dict[str, np.ndarray]:
        if stage == "avatar":
            self.detector_requests += 1
            if self.detector_requests > self.let_through:
                await self.release.wait()
        return await super().infer(model, inputs, outputs, stage)


@pytest.fixture
async def held_engine(triton: TritonAddress, tmp_path: Path) -> AsyncIterator[Engine]:
    settings = engine_settings(triton, tmp_path / "data", **STREAMING).model_copy(
        update={"detect_every": 4, "lipsync_batch_size": LIPSYNC_BATCH}
    )
    async with Engine(settings) as engine, HeldDetector(triton.grpc_url, LET_THROUGH) as held:
        engine.preparations.client = held
        yield engine


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    avatar, audio = tmp_path / "avatar.mp4", tmp_path / "speech.wav"
    write_avatar_video(avatar, seconds=2.4, fps=25, size=(192, 192))
    write_audio(audio, voiced_speech(3.0), 16000)
    return avatar, audio


def _held(engine: Engine) -> HeldDetector:
    client = engine.preparations.client
    assert isinstance(client, HeldDetector)
    return client


async def test_the_first_frame_is_encoded_before_the_avatar_is_prepared(
    held_engine: Engine, inputs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = DriveRecorder(monkeypatch)
    avatar, audio = inputs
    cache = held_engine.avatars_dir / content_id(avatar)
    seen_while_preparing: list[Progress] = []

    def on_progress(progress: Progress) -> None:
        if progress.frames_done >= 1 and not _held(held_engine).release.is_set():
            seen_while_preparing.append(progress)
            assert progress.stage == "avatar", "the job still reports the avatar stage"
            assert not cache.exists(), "the avatar is not in the cache yet"
            _held(held_engine).release.set()

    streamed = await asyncio.wait_for(
        held_engine.generate(avatar, audio, tmp_path / "streamed.mp4", on_progress),
        JOB_DEADLINE_S,
    )

    assert seen_while_preparing, "no frame was encoded while the avatar was prepared"
    assert _held(held_engine).detector_requests > LET_THROUGH, "some detection was held"
    assert cache.exists()
    # The same job again renders from the cache: the same boxes and the same frames.
    cached = await held_engine.generate(avatar, audio, tmp_path / "cached.mp4")
    _assert_same_video(streamed, cached, recorder)


async def test_jobs_with_the_same_new_avatar_share_one_preparation(
    held_engine: Engine, inputs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = DriveRecorder(monkeypatch)
    avatar, audio = inputs
    held = _held(held_engine)
    held.release.set()

    first, second = await asyncio.wait_for(
        asyncio.gather(
            held_engine.generate(avatar, audio, tmp_path / "first.mp4"),
            held_engine.generate(avatar, audio, tmp_path / "second.mp4"),
        ),
        JOB_DEADLINE_S,
    )

    # One request per detected frame (batches of one): one preparation's worth.
    assert held.detector_requests == first.avatar.detected_frames
    _assert_same_video(first, second, recorder)


DrivenRecord = tuple[int, int, tuple[int, int, int, int] | None, str, str]


class DriveRecorder:
    """Records what the drive stage hands on (output frame, avatar frame, face box, and
    digests of the pixels and the mel window): the input of everything after it, so a
    difference is pinned to the frame and stage where it starts. The encoded files
    themselves are compared by frame count."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.jobs: list[list[DrivenRecord]] = []
        real_drive = drive

        async def recording_drive(
            avatar: AvatarPrefix,
            frames: FrameStore,
            mel: np.ndarray,
            fps: Fraction,
            total: int,
            out: asyncio.Queue[DrivenFrame | None],
            pool: Executor,
            clock: StageClock,
        ) -> None:
            records: list[DrivenRecord] = []
            self.jobs.append(records)
            tee: asyncio.Queue[DrivenFrame | None] = asyncio.Queue(1)

            async def forward() -> None:
                while (item := await tee.get()) is not None:
                    records.append(
                        (
                            item.index,
                            item.avatar_index,
                            item.box,
                            hashlib.sha1(item.frame.tobytes()).hexdigest(),
                            hashlib.sha1(item.mel_window.tobytes()).hexdigest(),
                        )
                    )
                    await out.put(item)
                await out.put(None)

            async with asyncio.TaskGroup() as group:
                group.create_task(forward())
                await real_drive(avatar, frames, mel, fps, total, tee, pool, clock)

        monkeypatch.setattr(runner, "drive", recording_drive)


def _assert_same_video(a: JobResult, b: JobResult, recorder: DriveRecorder) -> None:
    """Same boxes, and every stage after drive got the same frames, boxes and windows."""
    np.testing.assert_array_equal(a.avatar.boxes, b.avatar.boxes)
    first, second = recorder.jobs[-2:]
    assert len(first) == len(second) == a.frames
    for one, other in zip(first, second, strict=True):
        assert one == other, f"output frame {one[0]} was driven differently"
    assert len(decode_frames(a.output)) == len(decode_frames(b.output)) == a.frames
