"""A WebRTC client for the tests: aiortc on 127.0.0.1 only, receiving a session's video
and audio through POST /v1/sessions/{id}/webrtc."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from orchestrator.live.peer import host_addresses

LOOPBACK = ["127.0.0.1"]


@dataclass
class Receiving:
    pc: RTCPeerConnection
    video: MediaStreamTrack
    audio: MediaStreamTrack


@asynccontextmanager
async def webrtc_peer(http: httpx.AsyncClient, session_id: str) -> AsyncIterator[Receiving]:
    """A peer connected to the session (its ICE candidates: 127.0.0.1 only, no STUN)."""
    with host_addresses(LOOPBACK):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            video = pc.addTransceiver("video", direction="recvonly")
            audio = pc.addTransceiver("audio", direction="recvonly")
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
