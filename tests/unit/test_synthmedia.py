"""Synthetic media decode with PyAV to exactly what the writers promise."""

from __future__ import annotations

import stat
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import skimage.data

from synthmedia.__main__ import main as synthmedia_main
from synthmedia.audio import (
    BURST_AMPLITUDE,
    PITCH_HIGH_HZ,
    PITCH_LOW_HZ,
    bursts,
    read_wav,
    voiced_speech,
    write_audio,
    write_empty,
    write_random_bytes,
    write_speech,
)
from synthmedia.avatar import mouth_region, write_avatar_video, write_video_without_audio
from synthmedia.contact_sheet import SheetLayout, pick_frames, write_contact_sheet

# Lossy codecs add priming/padding samples (AAC 1024, Opus 312, MP3 1105 + frame rounding).
CODEC_PADDING_S = 0.1


def decode_video(path: Path) -> tuple[av.VideoStream, list[av.VideoFrame], list[str]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        kinds: list[str] = sorted(s.type for s in container.streams)
    return stream, frames, kinds


def decode_audio(path: Path) -> tuple[np.ndarray, int, str]:
    """All samples as float [channels, n], the sample rate and the codec name."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        codec = stream.codec_context.name
        # Any dtype: PyAV's union of float and integer arrays is not narrowed by issubdtype.
        chunks: list[np.ndarray] = [
            frame.to_ndarray().reshape(stream.channels, -1) for frame in container.decode(stream)
        ]
        rate = stream.codec_context.sample_rate
    samples = np.concatenate(chunks, axis=1).astype(np.float32)
    if np.issubdtype(chunks[0].dtype, np.integer):
        samples /= np.iinfo(chunks[0].dtype).max
    return samples, rate, codec


def face_match(image: np.ndarray, width: int) -> float:
    """How well the astronaut's face (scaled like the avatar crop) matches anywhere in `image`."""
    photo = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    face = photo[60:170, 170:260]
    scale = width / 256
    face = cv2.resize(face, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return float(cv2.matchTemplate(image, face, cv2.TM_CCOEFF_NORMED).max())


@pytest.mark.parametrize(
    ("suffix", "codec"),
    [(".mp4", "h264"), (".mkv", "h264"), (".mov", "h264"), (".webm", "vp9")],
)
def test_avatar_video_has_the_promised_frames_size_and_rate(
    tmp_path: Path, suffix: str, codec: str
) -> None:
    path = tmp_path / f"avatar{suffix}"
    write_avatar_video(path, seconds=1.2, fps=25, size=(240, 160))
    stream, frames, kinds = decode_video(path)
    assert kinds == ["video"]
    assert stream.codec_context.name == codec
    assert abs(len(frames) - 30) <= 1
    assert (frames[0].width, frames[0].height) == (240, 160)
    assert stream.average_rate == 25
    assert frames[-1].time == pytest.approx(29 / 25, abs=1e-3)
    assert frames[0].rotation == 0


def test_ntsc_rate_is_kept_exactly(tmp_path: Path) -> None:
    path = tmp_path / "ntsc.mp4"
    write_avatar_video(path, seconds=1.0, fps=29.97, size=(160, 160))
    stream, frames, _ = decode_video(path)
    assert stream.average_rate == Fraction(2997, 100)
    assert abs(len(frames) - 30) <= 1


def test_face_video_shows_the_astronaut_moving(tmp_path: Path) -> None:
    path = tmp_path / "face.mp4"
    write_avatar_video(path, seconds=1.0, fps=25, size=(320, 320))
    _, frames, _ = decode_video(path)
    first, half_cycle = (frames[i].to_ndarray(format="bgr24") for i in (0, 12))
    assert face_match(first, 320) > 0.7
    # Half a motion period later the head has moved: frames differ, but only a little.
    difference = np.abs(first.astype(np.int16) - half_cycle.astype(np.int16)).mean()
    assert 1.0 < difference < 40.0


def test_scene_video_has_no_face(tmp_path: Path) -> None:
    path = tmp_path / "scene.mp4"
    write_avatar_video(path, seconds=0.4, fps=25, size=(320, 320), face=False)
    _, frames, _ = decode_video(path)
    assert face_match(frames[0].to_ndarray(format="bgr24"), 320) < 0.5


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_is_stored_as_display_matrix(tmp_path: Path, suffix: str, rotation: int) -> None:
    upright_path = tmp_path / f"upright{suffix}"
    rotated_path = tmp_path / f"rotated{suffix}"
    write_avatar_video(upright_path, seconds=0.2, fps=25, size=(240, 160))
    write_avatar_video(rotated_path, seconds=0.2, fps=25, size=(240, 160), rotation=rotation)
    _, upright_frames, _ = decode_video(upright_path)
    _, rotated_frames, _ = decode_video(rotated_path)
    stored = rotated_frames[0]
    # The display matrix reads back counter-clockwise: a clockwise display turn is negative.
    assert stored.rotation % 360 == -rotation % 360
    expected_stored_size = (160, 240) if rotation in (90, 270) else (240, 160)
    assert (stored.width, stored.height) == expected_stored_size
    # What the decoder must do: turn the stored frame by frame.rotation, counter-clockwise.
    upright = np.rot90(stored.to_ndarray(format="bgr24"), k=round(stored.rotation / 90))
    reference = upright_frames[0].to_ndarray(format="bgr24")
    assert upright.shape == reference.shape
    assert np.abs(upright.astype(np.int16) - reference.astype(np.int16)).mean() < 3.0


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_vfr_timestamps_alternate_around_the_mean_rate(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"vfr{suffix}"
    write_avatar_video(path, seconds=1.0, fps=25, size=(160, 160), vfr=True)
    _, frames, _ = decode_video(path)
    times_ms = np.array([round(frame.time * 1000) for frame in frames])
    gaps = np.diff(times_ms)
    assert set(gaps[0::2]) == {30}
    assert set(gaps[1::2]) == {50}
    assert (times_ms[-1] - times_ms[0]) / (len(times_ms) - 1) == pytest.approx(40, abs=0.5)


@pytest.mark.parametrize(("suffix", "codec"), [(".mp4", "aac"), (".webm", "opus")])
def test_avatar_with_audio_carries_speech_for_its_whole_length(
    tmp_path: Path, suffix: str, codec: str
) -> None:
    path = tmp_path / f"talking{suffix}"
    write_avatar_video(path, seconds=1.0, fps=25, size=(160, 160), audio=True)
    _, frames, kinds = decode_video(path)
    assert kinds == ["audio", "video"]
    assert abs(len(frames) - 25) <= 1
    samples, rate, audio_codec = decode_audio(path)
    assert audio_codec == codec
    assert samples.shape[1] / rate == pytest.approx(1.0, abs=CODEC_PADDING_S)
    assert np.abs(samples).max() > 0.1


def test_video_without_audio_has_no_audio_stream(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    write_video_without_audio(path, seconds=0.4)
    _, frames, kinds = decode_video(path)
    assert kinds == ["video"]
    assert abs(len(frames) - 10) <= 1


@pytest.mark.parametrize(
    ("suffix", "codec", "rate"),
    [
        (".wav", "pcm_s16le", 16000),
        (".m4a", "aac", 16000),
        (".mp3", "mp3float", 16000),  # libmp3lame encodes, FFmpeg's float decoder reads
        (".ogg", "opus", 48000),  # Opus always decodes at 48 kHz
        (".opus", "opus", 48000),
        (".flac", "flac", 16000),
    ],
)
def test_write_audio_formats_decode_to_the_same_length(
    tmp_path: Path, suffix: str, codec: str, rate: int
) -> None:
    path = tmp_path / f"speech{suffix}"
    write_audio(path, voiced_speech(1.5), 16000, channels=2)
    samples, decoded_rate, decoded_codec = decode_audio(path)
    assert decoded_codec == codec
    assert decoded_rate == rate
    assert samples.shape[0] == 2
    assert samples.shape[1] / rate == pytest.approx(1.5, abs=CODEC_PADDING_S)
    assert 0.3 < np.abs(samples).max() < 1.0


def test_lossless_audio_round_trips(tmp_path: Path) -> None:
    speech = voiced_speech(0.5, seed=4)
    for suffix in (".wav", ".flac"):
        path = tmp_path / f"exact{suffix}"
        write_audio(path, speech)
        samples, _, _ = decode_audio(path)
        assert np.abs(samples[0] - speech).max() < 2 / 32768


def test_unknown_audio_suffix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="suffix"):
        write_audio(tmp_path / "speech.xyz", np.zeros(100, dtype=np.float32))


def test_bursts_are_loud_exactly_where_placed_and_silent_elsewhere() -> None:
    audio = bursts(2.0, [0.5, 1.25], burst_seconds=0.04, sample_rate=16000)
    assert audio.shape == (32000,) and audio.dtype == np.float32
    loud = np.flatnonzero(np.abs(audio) > 0)
    first, second = loud[loud < 16000], loud[loud >= 16000]
    assert (first.min(), second.min()) == (8000, 20000)
    assert (first.max(), second.max()) == pytest.approx((8639, 20639), abs=1)
    assert np.abs(audio).max() == pytest.approx(BURST_AMPLITUDE, abs=0.01)
    assert np.sqrt(np.mean(audio[8000:8640] ** 2)) > 0.3


def test_burst_outside_the_audio_is_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        bursts(1.0, [1.5])


def test_voiced_speech_has_pitch_syllables_and_pauses() -> None:
    speech = voiced_speech(4.0, seed=1)
    assert speech.shape == (64000,) and speech.dtype == np.float32
    assert 0.5 < np.abs(speech).max() <= 0.6 + 1e-6
    energy = np.sqrt(np.mean(speech.reshape(-1, 800) ** 2, axis=1))  # 50 ms windows
    assert (energy < 0.01 * energy.max()).mean() > 0.1  # pauses
    assert (energy > 0.2 * energy.max()).mean() > 0.3  # speech
    # The pitch of the loudest window lies in the glottal range.
    loudest = int(np.argmax(energy))
    window = speech[loudest * 800 : (loudest + 1) * 800].astype(np.float64)
    correlation = np.correlate(window, window, mode="full")[window.size - 1 :]
    low_lag, high_lag = int(16000 / PITCH_HIGH_HZ) - 3, int(16000 / PITCH_LOW_HZ) + 3
    lag = low_lag + int(np.argmax(correlation[low_lag:high_lag]))
    assert PITCH_LOW_HZ - 10 < 16000 / lag < PITCH_HIGH_HZ + 10


def test_voiced_speech_is_reproducible_by_seed() -> None:
    assert np.array_equal(voiced_speech(0.5, seed=7), voiced_speech(0.5, seed=7))
    assert not np.array_equal(voiced_speech(0.5, seed=7), voiced_speech(0.5, seed=8))


def test_write_speech_falls_back_to_voiced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    path = tmp_path / "speech.wav"
    assert write_speech(path, 1.3) == "voiced"
    samples, rate = read_wav(path)
    assert rate == 16000 and samples.size == 20800


def test_write_speech_uses_espeak_ng_when_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in espeak-ng that writes a 22.05 kHz wav, as the real one does."""
    tools = tmp_path / "bin"
    tools.mkdir()
    fake = tools / "espeak-ng"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "import numpy as np\n"
        "from synthmedia.audio import write_audio\n"
        "out = sys.argv[sys.argv.index('-w') + 1]\n"
        "t = np.arange(22050) / 22050\n"
        "write_audio(out, (0.5 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), 22050)\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(tools))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    path = tmp_path / "speech.wav"
    assert write_speech(path, 1.5, text="hello") == "espeak-ng"
    samples, rate = read_wav(path)
    assert rate == 16000 and samples.size == 24000
    assert np.abs(samples[:15000]).max() > 0.4  # one second of tone, resampled
    assert np.all(samples[16100:] == 0)  # then silence up to the requested length


def test_bad_input_files_are_not_media(tmp_path: Path) -> None:
    garbage, empty = tmp_path / "garbage.mp4", tmp_path / "empty.mp4"
    write_random_bytes(garbage, 4096)
    write_empty(empty)
    assert garbage.stat().st_size == 4096 and empty.stat().st_size == 0
    for path in (garbage, empty):
        with pytest.raises(av.error.InvalidDataError):
            av.open(str(path))


def test_demo_command_writes_avatar_and_speech(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert synthmedia_main(["demo", str(tmp_path), "--seconds", "2"]) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "avatar.mp4") in printed
    assert "speech.wav" in printed and ("voiced" in printed or "espeak-ng" in printed)
    _, frames, _ = decode_video(tmp_path / "avatar.mp4")
    assert abs(len(frames) - 100) <= 1
    assert (frames[0].width, frames[0].height) == (384, 384)
    samples, rate = read_wav(tmp_path / "speech.wav")
    assert samples.size == 2 * rate


def test_contact_sheet_is_a_png_of_the_promised_size(tmp_path: Path) -> None:
    video = tmp_path / "talking.mp4"
    write_avatar_video(video, seconds=1.0, fps=25, size=(160, 120), audio=True)
    sheet = tmp_path / "sheet.png"
    region = mouth_region((160, 120))
    size = write_contact_sheet(video, sheet, region, frames=5, columns=3)
    layout = SheetLayout(frames=5, columns=3, frame_size=(160, 120), region=region)
    image = cv2.imread(str(sheet))
    assert image is not None and sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (image.shape[1], image.shape[0]) == size == layout.size
    assert layout.rows == 2 and pick_frames(25, 5) == [0, 6, 12, 18, 24]


def test_contact_sheet_command_refuses_a_region_outside_the_video(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = tmp_path / "avatar.mp4"
    write_avatar_video(video, seconds=0.2, fps=25, size=(96, 96))
    out = tmp_path / "sheet.png"
    assert synthmedia_main(["contact-sheet", str(video), str(out), "--region", "90,90,20,20"]) == 2
    assert "not inside the 96x96 video" in capsys.readouterr().err and not out.exists()
