"""Caching, cancellation and the second generator architecture."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from orchestrator.pipeline.avatar_cache import content_id, load_avatar
from orchestrator.pipeline.runner import Engine, Progress
from orchestrator.triton import TritonClient
from synthmedia.audio import voiced_speech, write_audio
from synthmedia.avatar import write_avatar_video
from tests.conftest import WAV2LIP_MODEL, TritonAddress
from tests.pipeline.conftest import engine_settings
from tests.pipeline.frames import decode_frames, psnr

CANCEL_AFTER_FRAMES = 10
CANCEL_DEADLINE_S = 2.0


async def test_second_job_with_the_same_avatar_sends_no_detection(
    engine: Engine, triton_client: TritonClient, tmp_path: Path
) -> None:
    avatar = tmp_path / "fresh.mp4"
    write_avatar_video(avatar, seconds=0.5, size=(160, 160))
    audio = tmp_path / "speech.wav"
    write_audio(audio, voiced_speech(0.5), 16000)
    detector = engine.settings.detector_model

    before = await triton_client.statistics(detector)
    await engine.generate(avatar, audio, tmp_path / "first.mp4")
    after_first = await triton_client.statistics(detector)
    copy = tmp_path / "same-bytes-other-name.mp4"
    copy.write_bytes(avatar.read_bytes())
    await engine.generate(copy, audio, tmp_path / "second.mp4")
    after_second = await triton_client.statistics(detector)

    assert after_first.inference_count > before.inference_count
    assert after_second.inference_count == after_first.inference_count


async def test_cancelling_midway_leaves_no_output_task_or_thread(
    engine: Engine, short_avatar: Path, tmp_path: Path
) -> None:
    audio = tmp_path / "long.wav"
    write_audio(audio, voiced_speech(20.0), 16000)
    await engine.prepare_avatar(short_avatar)  # cached: the job goes straight to frames
    threads_before = threading.active_count()
    tasks_before = asyncio.all_tasks()
    midway = asyncio.Event()

    def on_progress(progress: Progress) -> None:
        if progress.frames_done >= CANCEL_AFTER_FRAMES:
            midway.set()

    out = tmp_path / "cancelled.mp4"
    job = asyncio.create_task(engine.generate(short_avatar, audio, out, on_progress))
    async with asyncio.timeout(120):
        await midway.wait()
    job.cancel()
    async with asyncio.timeout(CANCEL_DEADLINE_S):
        with pytest.raises(asyncio.CancelledError):
            await job
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [audio], "no partial file is left"
    assert asyncio.all_tasks() <= tasks_before | {asyncio.current_task()}
    assert threading.active_count() == threads_before


async def test_wav2lip_architecture_runs_through_the_same_pipeline(
    triton: TritonAddress, short_avatar: Path, tmp_path: Path
) -> None:
    settings = engine_settings(triton, tmp_path / "data", lipsync_model=WAV2LIP_MODEL)
    audio = tmp_path / "speech.wav"
    write_audio(audio, voiced_speech(0.6), 16000)
    async with Engine(settings) as wav2lip:
        assert wav2lip.served.lipsync.name == WAV2LIP_MODEL
        result = await wav2lip.generate(short_avatar, audio, tmp_path / "out.mp4")
    frames = decode_frames(result.output)
    assert len(frames) == result.frames == 15
    # Random weights draw noise, not a mouth: the face box must differ from the avatar.
    with result.avatar.open_frames() as store:
        x1, y1, x2, y2 = result.avatar.boxes[0]
        assert psnr(frames[0][y1:y2, x1:x2], store.read(0)[y1:y2, x1:x2]) < 25


async def test_a_cache_of_an_older_format_is_prepared_again_and_replaced(
    engine: Engine, tmp_path: Path
) -> None:
    # What an upgrade finds: the folder of this avatar, written by an older release.
    avatar = tmp_path / "upgraded.mp4"
    # Its own bytes: the engine's cache is shared by this module's tests.
    write_avatar_video(avatar, seconds=0.7, size=(160, 160))
    audio = tmp_path / "speech.wav"
    write_audio(audio, voiced_speech(0.5), 16000)
    stale = engine.avatars_dir / content_id(avatar)
    stale.mkdir(parents=True, exist_ok=True)
    (stale / "meta.json").write_text('{"store_version": 1}')

    result = await engine.generate(avatar, audio, tmp_path / "out.mp4")

    assert result.frames == 13
    assert load_avatar(stale) is not None, "the cache is the new one now"
    assert not list(engine.avatars_dir.glob(".*.partial"))
