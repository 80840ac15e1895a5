"""Synthetic media for the demo, the tests and the benchmarks; never downloads anything."""

from synthmedia.audio import (
    bursts,
    voiced_speech,
    write_audio,
    write_empty,
    write_random_bytes,
    write_speech,
)
from synthmedia.avatar import mouth_region, write_avatar_video, write_video_without_audio
from synthmedia.contact_sheet import write_contact_sheet
from synthmedia.two_faces import two_face_mouths, write_two_face_video

__all__ = [
    "bursts",
    "mouth_region",
    "two_face_mouths",
    "voiced_speech",
    "write_audio",
    "write_avatar_video",
    "write_contact_sheet",
    "write_empty",
    "write_random_bytes",
    "write_speech",
    "write_two_face_video",
    "write_video_without_audio",
]
