"""The encoder's settings reach libx264, and benchmarks.encoder measures what it claims."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from benchmarks.encoder import face_mask, measure, table
from orchestrator.pipeline.decode import read_video_frames
from orchestrator.pipeline.encode import Mp4Writer, VideoEncoder
from orchestrator.settings import Settings
from synthmedia.audio import voiced_speech, write_audio
from synthmedia.avatar import write_avatar_video

SIZE = (320, 240)


def _frames_and_audio(tmp_path: Path) -> tuple[list[np.ndarray], Path]:
    video, audio = tmp_path / "avatar.mp4", tmp_path / "speech.wav"
    write_avatar_video(video, seconds=0.4, size=SIZE)
    write_audio(audio, voiced_speech(0.4), 16000)
    return list(read_video_frames(video, 25)), audio


def test_preset_crf_and_threads_come_from_the_settings() -> None:
    settings = Settings(x264_preset="ultrafast", x264_crf=30, encode_threads=3)

    encoder = VideoEncoder.from_settings(settings)

    assert encoder.options() == {"preset": "ultrafast", "crf": "30", "threads": "3"}
    assert VideoEncoder().options() == {
        "preset": Settings().x264_preset,
        "crf": f"{Settings().x264_crf:g}",
    }


def test_a_higher_crf_writes_a_smaller_file_that_still_plays(tmp_path: Path) -> None:
    frames, audio = _frames_and_audio(tmp_path)
    sizes = {}
    for crf in (10.0, 40.0):
        out = tmp_path / f"crf{crf:g}.mp4"
        encoder = VideoEncoder(preset="ultrafast", crf=crf)
        writer = Mp4Writer(out, *SIZE, Fraction(25), audio, encoder)
        for frame in frames:
            writer.write(frame)
        writer.finish()
        sizes[crf] = out.stat().st_size
        assert len(list(read_video_frames(out, 25))) == len(frames)

    assert sizes[40.0] < sizes[10.0] / 2


def test_the_encoder_table_rates_quality_outside_the_face(tmp_path: Path) -> None:
    frames, audio = _frames_and_audio(tmp_path)
    mask = face_mask(*SIZE)
    assert 0 < mask.mean() < 0.5  # the face, not the frame

    fine, coarse = (
        measure(VideoEncoder(preset="ultrafast", crf=crf), frames, audio, tmp_path / "o.mp4", mask)
        for crf in (12.0, 40.0)
    )

    assert fine.psnr_outside_face_db > coarse.psnr_outside_face_db > 20
    assert fine.fps > 0 and fine.kbit_per_s > coarse.kbit_per_s
    assert "| ultrafast | 12 | auto |" in table([fine, coarse])
