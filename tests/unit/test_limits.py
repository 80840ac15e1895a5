"""Input limits on real media files: lengths and sizes refused with the setting named."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import BadInput, LimitExceeded
from orchestrator.jobs.limits import check_audio, check_video, job_deadline_s
from orchestrator.settings import Settings
from synthmedia.audio import voiced_speech, write_audio
from synthmedia.avatar import write_avatar_video

RATE = 16000


def test_audio_over_the_limit_names_its_length_and_the_setting(tmp_path: Path) -> None:
    audio = tmp_path / "speech.m4a"
    write_audio(audio, voiced_speech(3.0), RATE)

    info = check_audio(audio, Settings(max_audio_seconds=5))
    assert info is not None and info.seconds == pytest.approx(3.0, 0.05)
    with pytest.raises(LimitExceeded) as refused:
        check_audio(audio, Settings(max_audio_seconds=2))
    assert refused.value.status == 422
    assert "3.0 s" in refused.value.message and "DH_MAX_AUDIO_SECONDS" in refused.value.message


def test_a_partial_file_is_refused_only_when_certainly_over(tmp_path: Path) -> None:
    video = tmp_path / "wide.mkv"
    write_avatar_video(video, seconds=1.0, fps=10, size=(640, 160))
    head = tmp_path / "head.mkv"
    head.write_bytes(video.read_bytes()[:4096])
    garbage = tmp_path / "garbage.mkv"
    garbage.write_bytes(b"\0" * 100)

    # Matroska states the frame size up front: the first few KiB already tell. (The
    # header size is before rotation, so it must be over the limits either way up.)
    with pytest.raises(LimitExceeded, match="640x160"):
        check_video(head, Settings(max_video_width=320, max_video_height=320), partial=True)
    # Length is never judged from a partial file.
    assert check_video(head, Settings(max_video_seconds=0.5), partial=True) is None
    assert check_video(garbage, Settings(), partial=True) is None
    with pytest.raises(BadInput):
        check_video(garbage, Settings())


def test_video_size_and_length_limits(tmp_path: Path) -> None:
    video = tmp_path / "avatar.mp4"
    write_avatar_video(video, seconds=2.0, fps=10, size=(192, 128))

    assert check_video(video, Settings()) is not None
    with pytest.raises(LimitExceeded, match="192x128"):
        check_video(video, Settings(max_video_width=160))
    with pytest.raises(LimitExceeded, match="192x128"):
        check_video(video, Settings(max_video_pixels=192 * 127))
    with pytest.raises(LimitExceeded, match="DH_MAX_VIDEO_SECONDS"):
        check_video(video, Settings(max_video_seconds=1.5))


def test_the_deadline_grows_with_the_audio() -> None:
    settings = Settings(job_deadline_base_s=60, job_deadline_per_audio_s=2.5)
    assert job_deadline_s(0.0, settings) == 60
    assert job_deadline_s(10.0, settings) == 85
    assert job_deadline_s(10.1, settings) == 86  # whole seconds, rounded up
