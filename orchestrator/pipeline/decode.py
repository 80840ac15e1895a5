"""decode: PyAV opens the avatar video and the speech track.

Video frames come out upright (rotation metadata honoured) as BGR uint8 at a constant
frame rate chosen by timestamps, so variable-frame-rate input is held or dropped the way a
player would show it. Audio comes out as 16 kHz mono float32, the rate the mel needs.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from orchestrator.errors import BadInput
from orchestrator.pipeline.mel import SAMPLE_RATE

STAGE = "decode"
# A timestamp within this fraction of a frame interval counts as "on time" (float pts jitter).
TIMESTAMP_SLACK = 1e-3
# A rate outside this range in a container is metadata noise, not a real video rate.
MIN_FPS, MAX_FPS = 1.0, 240.0


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int  # upright, after rotation
    height: int
    fps: float  # nominal (average) rate
    frame_count: int  # estimate from the container; decoding is the truth
    duration_s: float
    rotation: int  # degrees counter-clockwise that make the stored frames upright


def require_input(path: Path, what: str, name: str | None = None) -> None:
    """BadInput unless `path` is a non-empty file. `name` is how the user knows the file
    (an upload's filename); messages never show where the server keeps it."""
    label = name or path.name
    try:
        size = path.stat().st_size if path.is_file() else None
    except (OSError, ValueError):  # ValueError: a NUL byte in the name
        size = None
    if size is None:
        raise BadInput(STAGE, f"{what} {label}: no such file")
    if size == 0:
        raise BadInput(STAGE, f"{what} {label}: the file is empty")


def _open(path: Path, what: str, name: str | None = None) -> av.container.InputContainer:
    require_input(path, what, name)
    try:
        return av.open(str(path), "r")
    except av.FFmpegError as exc:
        raise BadInput(
            STAGE,
            f"{what} {name or path.name}: not a media file PyAV can read "
            f"({exc.strerror or 'unknown format'})",
        ) from None


def _video_stream(container: av.container.InputContainer, label: str) -> av.VideoStream:
    if not container.streams.video:
        kinds = sorted({str(s.type) for s in container.streams}) or ["none"]
        raise BadInput(STAGE, f"avatar {label}: has no video stream (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def _nominal_fps(stream: av.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and MIN_FPS <= float(rate) <= MAX_FPS:
            return float(rate)
    raise BadInput(STAGE, "avatar video has no usable frame rate")


def _upright(frame: av.VideoFrame) -> np.ndarray:
    image = frame.to_ndarray(format="bgr24")
    quarter_turns = round((frame.rotation or 0) / 90) % 4
    # The display matrix rotates counter-clockwise by frame.rotation; np.rot90 with k > 0
    # turns counter-clockwise as well.
    return np.ascontiguousarray(np.rot90(image, quarter_turns)) if quarter_turns else image


def probe_video(path: Path, name: str | None = None) -> VideoInfo:
    """Reads the container header and the first frame; raises BadInput for unusable files."""
    label = name or path.name
    with _open(path, "avatar", name) as container:
        stream = _video_stream(container, label)
        fps = _nominal_fps(stream)
        try:
            first = next(container.decode(stream))
        except StopIteration:
            raise BadInput(STAGE, f"avatar {label}: the video stream has no frames") from None
        except av.FFmpegError as exc:
            raise BadInput(STAGE, f"avatar {label}: cannot decode video ({_why(exc)})") from None
        rotation = round((first.rotation or 0) / 90) % 4 * 90
        width, height = (
            (first.height, first.width) if rotation in (90, 270) else (first.width, first.height)
        )
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        frames = stream.frames or max(1, round(duration * fps))
    return VideoInfo(path, width, height, fps, frames, duration, rotation)


def read_video_frames(
    path: Path, fps: float, name: str | None = None
) -> Generator[np.ndarray, None, None]:
    """Upright BGR frames at exactly `fps`, chosen by presentation time.

    Output frame j shows the input frame on screen at time j / fps (from the first frame):
    frames of a faster or irregular input are dropped, gaps are filled by holding.
    """
    interval = 1.0 / fps
    label = name or path.name
    with _open(path, "avatar", name) as container:
        stream = _video_stream(container, label)
        nominal = 1.0 / _nominal_fps(stream)
        start: float | None = None
        shown: np.ndarray | None = None
        next_out = 0
        last_time = 0.0
        try:
            for index, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else index * nominal
                if start is None:
                    start = t
                t -= start
                if shown is not None:
                    while next_out * interval < t - TIMESTAMP_SLACK * interval:
                        yield shown
                        next_out += 1
                shown, last_time = _upright(frame), t
        except av.FFmpegError as exc:
            raise BadInput(STAGE, f"avatar {label}: cannot decode video ({_why(exc)})") from None
        if shown is None:
            raise BadInput(STAGE, f"avatar {label}: the video stream has no frames")
        # The last frame stays on screen for one nominal frame interval.
        end = last_time + nominal
        while next_out * interval < end - TIMESTAMP_SLACK * interval:
            yield shown
            next_out += 1


def decode_audio(path: Path, name: str | None = None) -> np.ndarray:
    """The first audio stream as 16 kHz mono float32 in [-1, 1]."""
    label = name or path.name
    with _open(path, "audio", name) as container:
        if not container.streams.audio:
            kinds = sorted({str(s.type) for s in container.streams}) or ["none"]
            raise BadInput(
                STAGE, f"audio {label}: has no audio stream (streams: {', '.join(kinds)})"
            )
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        expected = 0
        if stream.duration is not None and stream.time_base is not None:
            expected = math.ceil(float(stream.duration * stream.time_base) * SAMPLE_RATE)
        samples = _GrowingBuffer(expected or SAMPLE_RATE * 10)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    samples.extend(out.to_ndarray()[0])
            for out in resampler.resample(None):
                samples.extend(out.to_ndarray()[0])
        except av.FFmpegError as exc:
            raise BadInput(STAGE, f"audio {label}: cannot decode audio ({_why(exc)})") from None
    audio = samples.array()
    if audio.size == 0:
        raise BadInput(STAGE, f"audio {label}: the audio stream has no samples")
    return audio


def _why(error: av.FFmpegError) -> str:
    # str(FFmpegError) ends with the file's full path on this server; its strerror does not.
    return error.strerror or type(error).__name__


class _GrowingBuffer:
    """float32 samples appended in place: a long track is never held twice as a list of
    chunks and their concatenation."""

    def __init__(self, capacity: int) -> None:
        self._data = np.empty(max(capacity, 1), np.float32)
        self._size = 0

    def extend(self, chunk: np.ndarray) -> None:
        end = self._size + chunk.size
        if end > self._data.size:
            grown = np.empty(max(end, int(self._data.size * 1.5)), np.float32)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size : end] = chunk
        self._size = end

    def array(self) -> np.ndarray:
        return self._data[: self._size]
