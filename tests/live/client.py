"""A WebRTC client for the tests: aiortc on 127.0.0.1 only, receiving a session's video
and audio through POST /v1/sessions/{id}/webrtc."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from fractions import Fraction

import av
import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from orchestrator.live.peer import host_addresses

LOOPBACK = ["127.0.0.1"]


@dataclass
class Receiving:
    pc: RTCPeerConnection
    video: MediaStreamTrack
    audio: MediaStreamTrack


class Microphone(MediaStreamTrack):
    """A browser's microphone, played from samples: 20 ms frames at 48 kHz, in real time
    (aiortc's sender paces nothing itself), then silence."""

    kind = "audio"

    def __init__(self, samples: np.ndarray, rate: int = 48000) -> None:
        super().__init__()
        self._pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        self._rate = rate
        self._sent = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        chunk = self._rate // 50
        # Real time is the contract of a microphone: frame n leaves at n * 20 ms.
        await asyncio.sleep(max(0.0, self._start + self._sent / self._rate - loop.time()))
        pcm = np.zeros(chunk, np.int16)
        heard = self._pcm[self._sent : self._sent + chunk]
        pcm[: heard.size] = heard
        frame = av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")
        frame.sample_rate = self._rate
        frame.pts = self._sent
        frame.time_base = Fraction(1, self._rate)
        self._sent += chunk
        return frame


@asynccontextmanager
async def webrtc_peer(
    http: httpx.AsyncClient, session_id: str, microphone: MediaStreamTrack | None = None
) -> AsyncIterator[Receiving]:
    """A peer connected to the session (its ICE candidates: 127.0.0.1 only, no STUN);
    with a `microphone`, its audio goes to the session as speech."""
    with host_addresses(LOOPBACK):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            video = pc.addTransceiver("video", direction="recvonly")
            if microphone is None:
                audio = pc.addTransceiver("audio", direction="recvonly")
            else:
                audio = pc.addTransceiver(microphone, direction="sendrecv")
            await pc.setLocalDescription(await pc.createOffer())
            offer = pc.localDescription
            reply = await http.post(
                f"/v1/sessions/{session_id}/webrtc", json={"sdp": offer.sdp, "type": offer.type}
            )
            assert reply.status_code == 200, reply.text
            answer = reply.json()
            assert answer["type"] == "answer"
            await pc.setRemoteDescription(RTCSessionDescription(**answer))
            yield Receiving(pc, video.receiver.track, audio.receiver.track)
        finally:
            await pc.close()
