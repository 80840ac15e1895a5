"""The session's WebRTC peer: one RTCPeerConnection (aiortc) per session, its ICE config.

aiortc has no trickle ICE: the answer is sent once every local candidate is gathered, so
the SDP answer alone is enough for the browser. Host candidates come from aioice's
`get_host_addresses`, which lists every interface but 127.0.0.1 and has no per-connection
option; DH_ICE_HOST_ADDRESSES replaces that list for this process (`host_addresses`).
Without STUN/TURN servers aiortc would use Google's public STUN server: the configuration
always names its servers explicitly, so an empty DH_ICE_SERVERS means none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator

import aioice.ice
import av
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import SessionDescription

from orchestrator.errors import Backlogged, BadInput
from orchestrator.live.session import Session, SessionEnded, SessionState
from orchestrator.live.tracks import SessionAudioTrack, SessionVideoTrack
from orchestrator.pipeline.mel import SAMPLE_RATE
from orchestrator.settings import IceServer

log = logging.getLogger(__name__)
STAGE = "webrtc"
# connectionState values after which the peer is gone for good.
_GONE = frozenset({"failed", "closed"})


def ice_configuration(servers: list[IceServer]) -> RTCConfiguration:
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in servers
        ]
    )


@contextlib.contextmanager
def host_addresses(addresses: list[str]) -> Iterator[None]:
    """While open, aioice offers exactly `addresses` as host candidates (none given: its
    own choice, every interface but loopback)."""
    if not addresses:
        yield
        return
    original = aioice.ice.get_host_addresses

    def configured(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = configured
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = original


def _sends_opus(answer: RTCSessionDescription | None) -> bool:
    """Whether `answer` sends Opus, the first codec of its audio section (what aiortc's
    sender uses); an offer without Opus gets PCM frames, encoded by aiortc."""
    if answer is None:
        return False
    for media in SessionDescription.parse(answer.sdp).media:
        if media.kind == "audio" and media.rtp.codecs:
            return media.rtp.codecs[0].mimeType.lower() == "audio/opus"
    return False


class Peer:
    """The session's RTCPeerConnection: sends its video and audio, hears its microphone."""

    def __init__(
        self,
        session: Session,
        configuration: RTCConfiguration,
        on_state: Callable[[Peer, str], None],
    ) -> None:
        self.session = session
        self._pc = RTCPeerConnection(configuration)
        self._listening: set[asyncio.Task[None]] = set()
        self._on_state = on_state
        self._pc.on("track", self._on_track)
        self._pc.on("connectionstatechange", self._state_changed)

    async def answer(self, sdp: str, kind: str) -> RTCSessionDescription:
        """The answer to a browser's offer; BadInput when the offer cannot be used."""
        if kind != "offer":
            raise BadInput(STAGE, f"the description must be an offer, not '{kind}'")
        try:
            offer = RTCSessionDescription(sdp=sdp, type=kind)
            await self._pc.setRemoteDescription(offer)
            self._pc.addTrack(SessionVideoTrack(self.session))
            audio = SessionAudioTrack(self.session)
            self._pc.addTrack(audio)
            await self._pc.setLocalDescription(await self._pc.createAnswer())
            # Set before the first packet: media flows once ICE and DTLS are through.
            audio.opus = _sends_opus(self._pc.localDescription)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            # aiortc's SDP parser reports a broken offer with whatever the line broke.
            raise BadInput(
                STAGE, f"the SDP offer cannot be used: {exc or type(exc).__name__}"
            ) from exc
        except av.FFmpegError as exc:
            raise BadInput(
                STAGE, f"the SDP offer asks for a codec this server lacks: {exc}"
            ) from exc
        description = self._pc.localDescription
        if description is None:
            raise BadInput(STAGE, "the offer produced no answer")
        return description

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":  # the browser's microphone: speech like any other
            task = asyncio.create_task(self._listen(track))
            self._listening.add(task)
            task.add_done_callback(self._listening.discard)

    async def _listen(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            for heard in resampler.resample(frame):
                try:
                    self.session.queue_speech(heard.to_ndarray().reshape(-1))
                except Backlogged:
                    pass  # a microphone is real time: only a queued file fills the queue
                except SessionEnded:
                    return

    async def _state_changed(self) -> None:
        state = self._pc.connectionState
        if state == "connected":
            self.session.state = SessionState.STREAMING
        self._on_state(self, state)

    @property
    def gone(self) -> bool:
        return self._pc.connectionState in _GONE

    async def close(self) -> None:
        for task in list(self._listening):
            task.cancel()
        await self._pc.close()
        if self._listening:
            await asyncio.wait(self._listening)
