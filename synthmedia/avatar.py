"""Synthetic avatar videos: the astronaut photo with gentle head motion, or a faceless scene.

Frames are written with PyAV in any container the suffix names, optionally stored rotated
with a display matrix, with irregular timestamps, or with a speech track, so the decoder
meets the awkward inputs real uploads bring.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import skimage.data

from synthmedia.audio import audio_frame, voiced_speech

# Where the astronaut's head is in skimage.data.astronaut() (512x512): face ~x 170-260,
# y 60-170; this square crop keeps the head and shoulders, face large in frame.
_HEAD_CENTRE = (228.0, 148.0)
_HEAD_CROP = 256.0
# Where her mouth is in the photo (centre x, y) and a region around it (width, height)
# that takes in the lips and the chin, so the contact sheet can show the jaw move.
_MOUTH_CENTRE = (223.0, 154.0)
_MOUTH_REGION = (72.0, 52.0)
# Head motion: a few pixels of sway and ±2° of tilt, one cycle per ~2 s like idle talking.
_SWAY_PX = (3.0, 2.0)
_TILT_DEGREES = 2.0
_MOTION_PERIOD_S = 2.0
# Variable frame rate: gaps alternate 0.75 and 1.25 of the mean (30/50 ms at 25 fps).
_VFR_GAP_SWING = Fraction(1, 4)
# Millisecond timestamps for variable frame rate, as phones and screen recorders write.
_VFR_TIME_BASE = Fraction(1, 1000)
# Speech track rate: CD rate, so the decoder has to resample to the mel's 16 kHz.
_AUDIO_RATE = 44100
# The audio codec each container takes; WebM allows only Opus or Vorbis.
_AUDIO_CODEC = {".mp4": "aac", ".mov": "aac", ".mkv": "aac", ".webm": "libopus"}
# libopus runs at 48 kHz; the encoder resamples the 44.1 kHz track.
_OPUS_RATE = 48000
# WebM allows only VP8, VP9 and AV1 video.
_WEBM_VIDEO_CODECS = ("libvpx-vp9", "libvpx", "libaom-av1", "libsvtav1")
# Encoder settings: fast, and good enough that a face detector sees the same face.
_ENCODER_OPTIONS = {
    "libx264": {"preset": "veryfast", "crf": "18"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "row-mt": "1"},
}
ROTATIONS = (0, 90, 180, 270)


def write_avatar_video(
    path: Path,
    *,
    seconds: float,
    fps: float = 25,
    size: tuple[int, int] = (320, 320),
    face: bool = True,
    rotation: int = 0,
    vfr: bool = False,
    audio: bool = False,
    codec: str = "libx264",
    still: bool = False,
) -> None:
    """Write round(seconds * fps) frames of an avatar video to `path` (container by suffix).

    `size` is (width, height) as displayed. `rotation` is the clockwise turn a player
    applies on display (the old `rotate` tag): frames are stored turned the other way and
    the display matrix reads back as `frame.rotation == -rotation`, so
    `np.rot90(stored, k=frame.rotation // 90)` is upright again. `vfr` writes millisecond
    timestamps with gaps alternating 0.75/1.25 of 1/fps. `audio` adds a speech track.
    `still` holds the first picture (no head motion: only speech may move the mouth).
    """
    path = Path(path)
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"size must be positive, got {size}")
    # 4:2:0 chroma needs even sides; odd-sized uploads exist, and 4:4:4 stores them.
    pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation must be one of {ROTATIONS}, got {rotation}")
    if seconds <= 0 or fps <= 0:
        raise ValueError(f"seconds and fps must be > 0, got {seconds} and {fps}")
    suffix = path.suffix.lower()
    if suffix not in _AUDIO_CODEC:
        raise ValueError(f"no video container for suffix {suffix!r}")
    if suffix == ".webm" and codec not in _WEBM_VIDEO_CODECS:
        codec = "libvpx-vp9"
    rate = Fraction(fps).limit_denominator(1001)
    frame_count = max(1, round(seconds * fps))
    render = _AstronautRenderer(width, height) if face else _SceneRenderer(width, height)
    quarter_turns = rotation // 90
    stored_width, stored_height = (height, width) if quarter_turns % 2 else (width, height)

    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=rate, options=_ENCODER_OPTIONS.get(codec, {}))
        assert isinstance(video, av.VideoStream), f"{codec} is a video codec"
        video.width, video.height, video.pix_fmt = stored_width, stored_height, pix_fmt
        time_base = _VFR_TIME_BASE if vfr else 1 / rate
        video.codec_context.time_base = time_base
        video.time_base = time_base
        if rotation:
            # PyAV's angle is counter-clockwise; the player turns clockwise by `rotation`.
            video.set_display_rotation(-rotation)
        speech = _SpeechTrack(container, suffix, seconds) if audio else None

        for index in range(frame_count):
            moment = _frame_time(index, rate, vfr)
            upright = render(Fraction(0) if still else moment)
            stored = np.ascontiguousarray(np.rot90(upright, k=quarter_turns))
            frame = av.VideoFrame.from_ndarray(stored, format="bgr24")
            frame.pts = round(moment / time_base)
            frame.time_base = time_base
            container.mux(video.encode(frame))
            if speech is not None:
                speech.write_until((index + 1) / rate)
        container.mux(video.encode(None))
        if speech is not None:
            speech.finish()


def write_video_without_audio(
    path: Path, *, seconds: float = 2.0, fps: float = 25, size: tuple[int, int] = (320, 320)
) -> None:
    """A valid avatar video with no audio stream at all."""
    write_avatar_video(path, seconds=seconds, fps=fps, size=size, audio=False)


def mouth_region(size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x, y, width, height) around the mouth in an astronaut avatar frame of `size`
    (width, height) as `write_avatar_video` draws it; head motion moves it a few pixels."""
    width, height = size
    scale = min(width, height) / _HEAD_CROP
    centre_x = width / 2 + (_MOUTH_CENTRE[0] - _HEAD_CENTRE[0]) * scale
    centre_y = height / 2 + (_MOUTH_CENTRE[1] - _HEAD_CENTRE[1]) * scale
    region_w, region_h = (round(side * scale) for side in _MOUTH_REGION)
    x = min(max(0, round(centre_x - region_w / 2)), width - region_w)
    y = min(max(0, round(centre_y - region_h / 2)), height - region_h)
    return x, y, region_w, region_h


def _frame_time(index: int, rate: Fraction, vfr: bool) -> Fraction:
    """Presentation time of frame `index` in seconds."""
    regular = Fraction(index) / rate
    if not vfr or index % 2 == 0:
        return regular
    # Odd frames come early, so gaps alternate short/long and average exactly 1/rate.
    return regular - _VFR_GAP_SWING / rate


class _AstronautRenderer:
    """The astronaut photo's head and shoulders, swaying and tilting a little over time."""

    def __init__(self, width: int, height: int) -> None:
        self._photo = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
        self._size = (width, height)
        # The crop around the head has the output's aspect and its shorter side is _HEAD_CROP.
        self._scale = min(width, height) / _HEAD_CROP

    def __call__(self, moment: Fraction) -> np.ndarray:
        phase = 2 * math.pi * float(moment) / _MOTION_PERIOD_S
        tilt = _TILT_DEGREES * math.sin(phase + 0.5)
        sway_x = _SWAY_PX[0] * math.sin(phase)
        sway_y = _SWAY_PX[1] * math.sin(phase + 1.0)
        width, height = self._size
        matrix = cv2.getRotationMatrix2D(_HEAD_CENTRE, tilt, self._scale)
        matrix[0, 2] += width / 2 - _HEAD_CENTRE[0] + sway_x
        matrix[1, 2] += height / 2 - _HEAD_CENTRE[1] + sway_y
        return cv2.warpAffine(
            self._photo, matrix, self._size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )


class _SceneRenderer:
    """A faceless scene: drifting colour gradients with a few moving shapes."""

    def __init__(self, width: int, height: int) -> None:
        self._size = (width, height)
        self._y, self._x = np.mgrid[0:height, 0:width].astype(np.float32)

    def __call__(self, moment: Fraction) -> np.ndarray:
        t = float(moment)
        width, height = self._size
        blue = 128 + 80 * np.sin(self._x / 37.0 + 0.9 * t)
        green = 128 + 80 * np.sin(self._y / 53.0 - 0.6 * t)
        red = 128 + 80 * np.sin((self._x + self._y) / 71.0 + 0.4 * t)
        scene = np.ascontiguousarray(np.stack([blue, green, red], axis=-1).astype(np.uint8))
        centre = (int(width * (0.5 + 0.3 * math.sin(t))), int(height * (0.4 + 0.2 * math.cos(t))))
        cv2.circle(scene, centre, max(4, min(width, height) // 8), (30, 200, 240), -1)
        corner = (int(width * (0.2 + 0.1 * math.cos(0.7 * t))), int(height * 0.65))
        far = (corner[0] + width // 4, corner[1] + height // 5)
        cv2.rectangle(scene, corner, far, (220, 60, 90), -1)
        return scene


class _SpeechTrack:
    """Speech-like audio fed to the muxer alongside the video, so the two interleave."""

    def __init__(
        self, container: av.container.OutputContainer, suffix: str, seconds: float
    ) -> None:
        codec = _AUDIO_CODEC[suffix]
        codec_rate = _OPUS_RATE if codec == "libopus" else _AUDIO_RATE
        self._container = container
        stream = container.add_stream(codec, rate=codec_rate, layout="mono")
        assert isinstance(stream, av.AudioStream), f"{codec} is an audio codec"
        self._stream = stream
        self._samples = voiced_speech(seconds, sample_rate=_AUDIO_RATE)
        self._written = 0

    def write_until(self, moment: Fraction) -> None:
        stop = min(self._samples.size, int(moment * _AUDIO_RATE))
        if stop <= self._written:
            return
        chunk = self._samples[None, self._written : stop]
        self._container.mux(self._stream.encode(audio_frame(chunk, _AUDIO_RATE, self._written)))
        self._written = stop

    def finish(self) -> None:
        self.write_until(Fraction(self._samples.size, _AUDIO_RATE))
        self._container.mux(self._stream.encode(None))
