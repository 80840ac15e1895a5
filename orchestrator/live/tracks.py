"""The session's media as aiortc tracks, both stamped from the session's one clock.

Video frame i carries pts i/fps (90 kHz, RTP's video clock); audio sample p carries pts p
(16 kHz: Opus's encoder in aiortc resamples to 48 kHz and keeps the time). Frame i and the
speech that drives it are both at `i / fps` on the same clock, so they cannot drift apart.
"""

from __future__ import annotations

from fractions import Fraction

import av
import cv2
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from orchestrator.live.session import Session, SessionEnded
from orchestrator.live.speech import PCM_FULL_SCALE
from orchestrator.pipeline.mel import SAMPLE_RATE

# RTP's video clock rate (RFC 3551).
VIDEO_CLOCK = 90000
# 20 ms audio packets, WebRTC's usual Opus frame.
AUDIO_CHUNK = SAMPLE_RATE // 50


class SessionVideoTrack(MediaStreamTrack):
    """The session's frames as they are published; a slow reader skips to the newest."""

    kind = "video"

    def __init__(self, session: Session) -> None:
        super().__init__()
        self._session = session
        self._last = -1

    async def recv(self) -> av.VideoFrame:
        try:
            index, image = await self._session.next_frame(self._last)
        except SessionEnded as exc:
            self.stop()
            raise MediaStreamError("the session ended") from exc
        self._last = index
        frame = video_frame(image, index, self._session.fps)
        self._session.sent()
        return frame


def video_frame(image: np.ndarray, index: int, fps: Fraction) -> av.VideoFrame:
    """Frame `index` of a session (BGR) as the WebRTC encoders take it: yuv420p, stamped
    `index / fps` on RTP's video clock.

    OpenCV converts to yuv420p; left to the encoder, swscale did it at 7 times the cost
    (0.95 against 0.14 ms at 256 px), the most expensive step of a live frame after the
    encoder itself. Odd sides have no 4:2:0 layout: the encoder converts those."""
    height, width = image.shape[:2]
    if width % 2 == 0 and height % 2 == 0:
        yuv = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420).astype(np.uint8, copy=False)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
    else:
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
    frame.pts = round(index * VIDEO_CLOCK / fps)
    frame.time_base = Fraction(1, VIDEO_CLOCK)
    return frame


class SessionAudioTrack(MediaStreamTrack):
    """The session's speech, 20 ms at a time, each chunk at its time on the clock."""

    kind = "audio"

    def __init__(self, session: Session) -> None:
        super().__init__()
        self._session = session
        self._position: int | None = None

    async def recv(self) -> av.AudioFrame:
        session = self._session
        if self._position is None:
            self._position = session.position()  # a late peer starts at "now"
        position = self._position
        await session.until(position / SAMPLE_RATE)
        if session.state == "ended":
            self.stop()
            raise MediaStreamError("the session ended")
        samples = session.audio(position, AUDIO_CHUNK)
        pcm = np.clip(samples * PCM_FULL_SCALE, -PCM_FULL_SCALE, PCM_FULL_SCALE - 1)
        frame = av.AudioFrame.from_ndarray(pcm.astype(np.int16)[None], format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = position
        frame.time_base = Fraction(1, SAMPLE_RATE)
        self._position = position + AUDIO_CHUNK
        return frame
