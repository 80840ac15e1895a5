"""Awkward but valid inputs work; bad ones fail at the right stage with a clear message."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import av
import pytest

from orchestrator.errors import BadInput
from orchestrator.pipeline.decode import probe_video
from orchestrator.pipeline.runner import Engine
from synthmedia.audio import voiced_speech, write_audio, write_empty, write_random_bytes
from synthmedia.avatar import write_avatar_video

SPEECH_SECONDS = 1.0


@pytest.fixture(scope="module")
def speech(media: Path) -> Path:
    path = media / "speech.flac"  # lossless: decodes to exactly SPEECH_SECONDS
    write_audio(path, voiced_speech(SPEECH_SECONDS), 16000)
    return path


async def _generate(engine: Engine, avatar: Path, audio: Path, out: Path) -> tuple[int, int, int]:
    result = await engine.generate(avatar, audio, out)
    with av.open(str(result.output)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames, stream.width, stream.height


async def test_portrait_video_with_rotation_metadata_is_upright(
    engine: Engine, speech: Path, tmp_path: Path
) -> None:
    avatar = tmp_path / "portrait.mp4"
    write_avatar_video(avatar, seconds=0.6, size=(160, 224), rotation=90)
    info = probe_video(avatar)
    assert info.rotation != 0
    result = await engine.generate(avatar, speech, tmp_path / "out.mp4")
    # S3FD finds faces only upright: every frame having one shows the rotation was applied.
    assert result.frames_without_face == 0
    assert (result.avatar.width, result.avatar.height) == (info.width, info.height)


async def test_odd_sized_avatar_is_padded_to_even_sides(
    engine: Engine, speech: Path, tmp_path: Path
) -> None:
    avatar = tmp_path / "odd.mkv"
    write_avatar_video(avatar, seconds=0.4, size=(641, 479))
    frames, width, height = await _generate(engine, avatar, speech, tmp_path / "out.mp4")
    assert (width, height) == (642, 480)
    assert frames == math.ceil(SPEECH_SECONDS * 25)


async def test_variable_frame_rate_comes_out_constant(
    engine: Engine, speech: Path, tmp_path: Path
) -> None:
    avatar = tmp_path / "vfr.mkv"
    write_avatar_video(avatar, seconds=0.8, size=(160, 160), vfr=True, fps=25)
    result = await engine.generate(avatar, speech, tmp_path / "out.mp4")
    assert result.fps == 25
    with av.open(str(result.output)) as container:
        stream = container.streams.video[0]
        times = [frame.time for frame in container.decode(stream)]
    gaps = {round(b - a, 4) for a, b in itertools.pairwise(times)}
    assert gaps == {0.04}
    assert len(times) == result.frames == math.ceil(SPEECH_SECONDS * 25)


@pytest.mark.parametrize(
    ("name", "make_avatar", "stage", "message"),
    [
        (
            "avatar.mp4",
            lambda p: write_avatar_video(p, seconds=0.4, size=(160, 160), face=False),
            "avatar",
            "no face found",
        ),
        ("avatar.mp4", write_empty, "decode", "the file is empty"),
        ("avatar.mp4", lambda p: write_random_bytes(p, 50_000), "decode", "not a media file"),
        (
            "avatar.m4a",
            lambda p: write_audio(p, voiced_speech(0.5), 16000),
            "decode",
            "has no video stream",
        ),
    ],
    ids=["no-face", "empty", "random-bytes", "audio-only"],
)
async def test_bad_avatar_fails_at_its_stage(
    engine: Engine,
    speech: Path,
    tmp_path: Path,
    name: str,
    make_avatar: Callable[[Path], object],
    stage: str,
    message: str,
) -> None:
    avatar = tmp_path / name
    make_avatar(avatar)
    out = tmp_path / "out" / "result.mp4"
    with pytest.raises(BadInput) as caught:
        await engine.generate(avatar, speech, out)
    assert caught.value.stage == stage
    assert message in caught.value.message and name in caught.value.message
    assert not out.parent.exists() or not list(out.parent.iterdir())


@pytest.mark.parametrize(
    ("make_audio", "message"),
    [
        (
            lambda p: write_avatar_video(p, seconds=0.4, size=(160, 160), audio=False),
            "has no audio stream",
        ),
        (write_empty, "the file is empty"),
        (lambda p: write_random_bytes(p, 50_000), "not a media file PyAV can read"),
    ],
    ids=["video-without-audio", "empty", "random-bytes"],
)
async def test_bad_audio_fails_at_decode(
    engine: Engine,
    short_avatar: Path,
    tmp_path: Path,
    make_audio: Callable[[Path], object],
    message: str,
) -> None:
    audio = tmp_path / "speech.mp4"
    make_audio(audio)
    with pytest.raises(BadInput) as caught:
        await engine.generate(short_avatar, audio, tmp_path / "out.mp4")
    assert caught.value.stage == "decode"
    assert message in caught.value.message and "speech.mp4" in caught.value.message
    assert not (tmp_path / "out.mp4").exists()
