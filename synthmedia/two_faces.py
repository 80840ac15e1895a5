"""A synthetic avatar with two faces side by side, for choosing which one talks.

Each half of the frame is the astronaut avatar (avatar.py) with its own small head
motion, out of step with the other's, so the two faces are told apart by where they are,
not by how they look. The right face can be hidden for a run of frames (a faceless scene
in its place), as when a person turns away or leaves the shot.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from synthmedia.avatar import _AstronautRenderer, _SceneRenderer, mouth_region

# The right face sways this far behind the left one in its ~2 s motion cycle.
_RIGHT_PHASE_S = Fraction(7, 10)
# As avatar.py: fast, and good enough that a face detector sees the same face.
_X264_OPTIONS = {"preset": "veryfast", "crf": "18"}


def write_two_face_video(
    path: Path,
    *,
    seconds: float,
    fps: int = 25,
    half_size: tuple[int, int] = (192, 192),
    right_hidden: range = range(0),
) -> None:
    """Writes round(seconds * fps) frames to `path` (H.264 MP4): two astronaut avatars of
    `half_size` (width, height) side by side; frames in `right_hidden` have no right face."""
    width, height = half_size
    if width % 2 or height % 2:
        raise ValueError(f"half_size must have even sides (4:2:0), got {half_size}")
    face = _AstronautRenderer(width, height)
    scene = _SceneRenderer(width, height)
    rate = Fraction(fps)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=rate, options=_X264_OPTIONS)
        assert isinstance(video, av.VideoStream), "libx264 is a video codec"
        video.width, video.height, video.pix_fmt = 2 * width, height, "yuv420p"
        for index in range(max(1, round(seconds * fps))):
            moment = index / rate
            right = scene(moment) if index in right_hidden else face(moment + _RIGHT_PHASE_S)
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(np.hstack([face(moment), right])), format="bgr24"
            )
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode(None))


def two_face_mouths(half_size: tuple[int, int]) -> tuple[tuple[int, int, int, int], ...]:
    """(x, y, width, height) around the left and the right mouth in a frame that
    `write_two_face_video` draws; head motion moves each a few pixels."""
    x, y, w, h = mouth_region(half_size)
    return (x, y, w, h), (x + half_size[0], y, w, h)
