"""Synthetic media for the demo, the tests and the benchmarks; never downloads anything."""

from synthmedia.audio import (
    bursts,
    voiced_speech,
    write_audio,
    write_empty,
    write_random_bytes,
    write_speech,
)
from synthmedia.avatar import write_avatar_video, write_video_without_audio

__all__ = [
    "bursts",
    "voiced_speech",
    "write_audio",
    "write_avatar_video",
    "write_empty",
    "write_random_bytes",
    "write_speech",
    "write_video_without_audio",
]
