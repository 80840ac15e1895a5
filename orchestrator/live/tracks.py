"""The session's media as aiortc tracks, both stamped from the session's one clock.

Video frame i carries pts i/fps (90 kHz, RTP's video clock); audio sample p carries pts p
(16 kHz), or 3p once encoded to Opus (48 kHz). Frame i and the speech that drives it are
both at `i / fps` on the same clock, so they cannot drift apart.
"""

from __future__ import annotations

from collections import deque
from fractions import Fraction

import av
import cv2
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.stream import Stream

from orchestrator.live.session import Session, SessionEnded
from orchestrator.live.speech import PCM_FULL_SCALE
from orchestrator.pipeline.mel import SAMPLE_RATE

# RTP's video clock rate (RFC 3551).
VIDEO_CLOCK = 90000
# 40 ms audio packets: half the packets of WebRTC's usual 20 ms, each a trip through
# aiortc's RTP and SRTP in Python, and no later to the ear: a chunk is sent at its start
# on the clock, its speech queued DH_LIVE_LATENCY_S before. Opus takes 2.5 to 60 ms frames.
CHUNK_S = 0.04
AUDIO_CHUNK = round(SAMPLE_RATE * CHUNK_S)
# Opus's clock: always 48 kHz in RTP (RFC 7587).
OPUS_RATE = 48000
OPUS_CHUNK = round(OPUS_RATE * CHUNK_S)


class SessionVideoTrack(MediaStreamTrack):
    """The session's frames as they are published, in order; a reader that falls behind
    skips ahead (Session.next_frame)."""

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
    """The session's speech, CHUNK_S at a time, each chunk at its time on the clock: as PCM
    frames, or as Opus packets once `opus` is set (Peer sets it when its answer sends Opus).

    aiortc encodes each PCM frame on a thread of its own pool and back, a trip that costs
    more than the encoding (about 0.2 ms a chunk), for every chunk of every session; a packet
    handed to it is sent as it is."""

    kind = "audio"

    def __init__(self, session: Session) -> None:
        super().__init__()
        self._session = session
        self._position: int | None = None
        self.opus = False
        self._encoder: OpusPackets | None = None

    async def recv(self) -> av.AudioFrame | av.Packet[Stream]:
        if not self.opus:
            return await self._next_chunk(ahead_s=0.0)
        while True:
            # The resampler holds its first chunk back, so a chunk's packet comes out with
            # the next chunk: read one chunk ahead, or each packet would leave a chunk (a
            # video frame) after its time. What plays within DH_LIVE_LATENCY_S is final.
            frame = await self._next_chunk(ahead_s=CHUNK_S)
            if self._encoder is None:
                self._encoder = OpusPackets()
            packet = self._encoder.encode(frame)
            if packet is not None:  # None while the encoder fills its first frame
                return packet

    async def _next_chunk(self, ahead_s: float) -> av.AudioFrame:
        session = self._session
        if self._position is None:
            self._position = session.position()  # a late peer starts at "now"
        position = self._position
        await session.until(position / SAMPLE_RATE - ahead_s)
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


class OpusPackets:
    """Opus at aiortc's own encoder's rate (48 kHz stereo, 96 kb/s, tuned for voice), one
    packet per chunk, stamped with its chunk's time on the session's clock."""

    def __init__(self) -> None:
        self._codec = av.CodecContext.create("libopus", "w")
        self._codec.bit_rate = 96000
        self._codec.format = "s16"
        self._codec.layout = "stereo"
        self._codec.sample_rate = OPUS_RATE
        self._codec.time_base = Fraction(1, OPUS_RATE)
        self._codec.options = {
            "application": "voip",
            "frame_duration": str(CHUNK_S * 1000),
            # Half the encoder's time of its default 10 (0.22 against 0.40 ms a 40 ms
            # chunk, on the event loop), at a bit rate where Opus codes speech with CELT
            # and the complexity changes little of what is heard.
            "compression_level": "5",
        }
        self._resampler = av.AudioResampler(
            format="s16", layout="stereo", rate=OPUS_RATE, frame_size=OPUS_CHUNK
        )
        self._ready: deque[av.Packet[Stream]] = deque()
        self._next_pts: int | None = None

    def encode(self, frame: av.AudioFrame) -> av.Packet[Stream] | None:
        if self._next_pts is None:
            assert frame.pts is not None
            self._next_pts = frame.pts * OPUS_RATE // SAMPLE_RATE
        for resampled in self._resampler.resample(frame):
            self._ready.extend(self._codec.encode(resampled))
        if not self._ready:
            return None
        packet = self._ready.popleft()
        # The encoder's own pts start before zero (its pre-skip): each packet is the chunk
        # after the one before from the first chunk's time instead.
        packet.pts = self._next_pts
        packet.time_base = Fraction(1, OPUS_RATE)
        self._next_pts += OPUS_CHUNK
        return packet
