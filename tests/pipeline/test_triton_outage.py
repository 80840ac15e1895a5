"""Triton killed under a running job: the error says which stage, which model and why,
keeps its type, and costs DH_TRITON_RETRY_DEADLINE_S, not the request timeout."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orchestrator.errors import TritonUnavailable
from orchestrator.pipeline.runner import Engine, Progress
from orchestrator.settings import Settings
from synthmedia.audio import voiced_speech, write_audio
from synthmedia.avatar import write_avatar_video
from tests.outage import KillableTriton

RETRY_DEADLINE_S = 1.0
# A request timeout far above the retry deadline: the failure must come from the latter.
REQUEST_TIMEOUT_S = 120.0
# Retry deadline, the in-flight requests failing, and a 2-core machine's scheduling.
FAILURE_WITHIN_S = 15.0


def _settings(triton: KillableTriton, data_dir: Path) -> Settings:
    return Settings(
        triton_url=triton.grpc_url,
        data_dir=data_dir,
        detect_every=1,  # every frame goes to the detector: detection lasts long enough
        detector_batch_size=1,
        lipsync_batch_size=4,
        work_threads=2,
        triton_retry_deadline_s=RETRY_DEADLINE_S,
        triton_request_timeout_s=REQUEST_TIMEOUT_S,
    )


async def _generate_and_kill(
    triton: KillableTriton, settings: Settings, tmp_path: Path, kill_when: str
) -> tuple[TritonUnavailable, float]:
    avatar, audio = tmp_path / "avatar.mp4", tmp_path / "speech.wav"
    write_avatar_video(avatar, seconds=2.0, fps=25, size=(160, 160))
    write_audio(audio, voiced_speech(20.0), 16000)
    killed_at: list[float] = []

    def on_progress(progress: Progress) -> None:
        reached = (
            progress.avatar_frames >= 2 if kill_when == "avatar" else progress.frames_done >= 8
        )
        if progress.stage == kill_when and reached and not killed_at:
            triton.kill()
            killed_at.append(time.monotonic())

    async with Engine(settings) as engine:
        with pytest.raises(TritonUnavailable) as caught:
            await engine.generate(avatar, audio, tmp_path / "out.mp4", on_progress)
    assert killed_at, f"the job never reached stage {kill_when}"
    return caught.value, time.monotonic() - killed_at[0]


async def test_triton_killed_during_detection_fails_the_avatar_stage_naming_the_detector(
    killable_triton: KillableTriton, tmp_path: Path
) -> None:
    error, seconds = await _generate_and_kill(
        killable_triton, _settings(killable_triton, tmp_path / "data"), tmp_path, "avatar"
    )

    assert error.stage == "avatar"
    assert error.model == "face_detector"
    assert "unavailable" in error.message and killable_triton.grpc_url in error.message
    assert "TaskGroup" not in error.message and "Exception" not in error.message
    assert seconds < FAILURE_WITHIN_S
    # The half-prepared avatar leaves nothing behind.
    assert not any((tmp_path / "data" / "avatars").glob(".*.partial"))


async def test_triton_killed_during_inference_fails_the_infer_stage_naming_lipsync(
    killable_triton: KillableTriton, tmp_path: Path
) -> None:
    error, seconds = await _generate_and_kill(
        killable_triton, _settings(killable_triton, tmp_path / "data"), tmp_path, "infer"
    )

    assert error.stage == "infer"
    assert error.model == "lipsync"
    assert "unavailable" in error.message and killable_triton.grpc_url in error.message
    assert "TaskGroup" not in error.message
    assert seconds < FAILURE_WITHIN_S
