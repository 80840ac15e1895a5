"""Input limits: audio seconds, video size and length, checked before a job is accepted.

Each check reads only the container header where it can. A check on a partial file (an
upload still streaming in) reports a limit that is already certainly exceeded and
otherwise stays silent: headers that are not there yet, or durations estimated from a
partial file, are never a reason to refuse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import av

from orchestrator.errors import BadInput, LimitExceeded
from orchestrator.pipeline.decode import VideoInfo, probe_video
from orchestrator.settings import Settings

STAGE = "limits"
UNPROCESSABLE = 422


@dataclass(frozen=True)
class AudioInfo:
    seconds: float


def check_audio(
    path: Path, settings: Settings, partial: bool = False, name: str | None = None
) -> AudioInfo | None:
    """The track's length, or LimitExceeded (422) when it is over max_audio_seconds.
    `name` is the file as the client named it (the staged copy's name means nothing to
    them).

    A complete file with no usable duration in its header is decoded (stopping at the
    limit) so that a missing header cannot smuggle a long track past the check."""
    label = name or path.name
    try:
        seconds = _audio_header_seconds(path, partial, label)
    except BadInput:
        if partial:
            return None
        raise
    if seconds is None:
        if partial:
            return None
        seconds = _decoded_audio_seconds(path, settings.max_audio_seconds, label)
    if seconds > settings.max_audio_seconds:
        raise LimitExceeded(
            STAGE,
            f"audio {label} is {seconds:.1f} s long; this server takes at most "
            f"{settings.max_audio_seconds:g} s (DH_MAX_AUDIO_SECONDS)",
            UNPROCESSABLE,
        )
    return AudioInfo(seconds)


def check_video(
    path: Path, settings: Settings, partial: bool = False, name: str | None = None
) -> VideoInfo | None:
    """The video's header facts, or LimitExceeded (422) for size or length over the limits."""
    label = name or path.name
    if partial:
        _check_partial_video(path, settings, label)
        return None
    info = probe_video(path, name)
    _check_size(info.width, info.height, settings, label)
    seconds = info.duration_s or info.frame_count / info.fps
    if seconds > settings.max_video_seconds:
        raise LimitExceeded(
            STAGE,
            f"video {label} is {seconds:.1f} s long; this server takes at most "
            f"{settings.max_video_seconds:g} s (DH_MAX_VIDEO_SECONDS)",
            UNPROCESSABLE,
        )
    return info


def _check_size(width: int, height: int, settings: Settings, label: str) -> None:
    if (
        width > settings.max_video_width
        or height > settings.max_video_height
        or width * height > settings.max_video_pixels
    ):
        raise LimitExceeded(
            STAGE,
            f"video {label} is {width}x{height}; this server takes at most "
            f"{settings.max_video_width}x{settings.max_video_height} and "
            f"{settings.max_video_pixels} pixels per frame "
            "(DH_MAX_VIDEO_WIDTH, DH_MAX_VIDEO_HEIGHT, DH_MAX_VIDEO_PIXELS)",
            UNPROCESSABLE,
        )


def _check_partial_video(path: Path, settings: Settings, label: str) -> None:
    """Frame size from the stream header alone. The header's size is before rotation, so
    only a size over the limits in both orientations is certain."""
    try:
        with av.open(str(path), "r") as container:
            if not container.streams.video:
                return
            context = container.streams.video[0].codec_context
            width, height = context.width, context.height
    except av.FFmpegError:
        return  # the header is not all there yet
    if not width or not height:
        return
    try:
        _check_size(width, height, settings, label)
    except LimitExceeded as as_stored:
        try:
            _check_size(height, width, settings, label)
        except LimitExceeded:
            raise as_stored from None


def _audio_header_seconds(path: Path, partial: bool, label: str) -> float | None:
    try:
        container = av.open(str(path), "r")
    except av.FFmpegError as exc:
        reason = exc.strerror or "unknown format"  # str(exc) names the staged file's path
        raise BadInput(
            "decode", f"audio {label}: not a media file PyAV can read ({reason})"
        ) from None
    with container:
        if not container.streams.audio:
            kinds = sorted({str(s.type) for s in container.streams}) or ["none"]
            raise BadInput(
                "decode", f"audio {label}: has no audio stream (streams: {', '.join(kinds)})"
            )
        stream = container.streams.audio[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if container.duration is not None and not partial:
            return container.duration / av.time_base
    return None


def _decoded_audio_seconds(path: Path, limit_s: float, label: str) -> float:
    """Decodes the first audio stream, stopping a little past `limit_s`."""
    seconds = 0.0
    with av.open(str(path), "r") as container:
        stream = container.streams.audio[0]
        try:
            for frame in container.decode(stream):
                seconds += frame.samples / (frame.sample_rate or stream.rate or 1)
                if seconds > limit_s:
                    break
        except av.FFmpegError as exc:
            reason = exc.strerror or type(exc).__name__
            raise BadInput("decode", f"audio {label}: cannot decode audio ({reason})") from None
    return seconds


def job_deadline_s(audio_seconds: float, settings: Settings) -> float:
    """A job's deadline: a fixed part plus a part that grows with the audio."""
    per_audio = settings.job_deadline_per_audio_s * audio_seconds
    return math.ceil(settings.job_deadline_base_s + per_audio)
