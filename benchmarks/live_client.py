"""benchmarks.live's client: N sessions, each streaming speech up its WebSocket in real
time and receiving its frames over WebRTC with aiortc, every frame timed as it arrives;
the CPU per frame the servers and this client spend meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.live_figures import (
    Round,
    frame_latencies,
    late_fraction,
    onset_delay,
    percentile,
)
from benchmarks.live_servers import (
    SERVER_PIDS,
    START_DEADLINE_S,
    cpu_seconds,
)
from synthmedia.audio import SPEECH_RATE

AVATAR_FPS = 25
# The WebSocket carries 20 ms of PCM per message, as a browser's audio worklet sends it.
CHUNK_S = 0.02
# Frames are counted from this long after the speech starts (the pipeline fills first) ...
SETTLE_S = 1.0
# ... and received for this long after it ends, so the last ones arrive.
TAIL_S = 1.5
# Sessions of the rounds that measure each architecture's whole CPU per frame at one load
# (well below capacity), and the live path's where no round of the search measured it.
CODEC_SESSIONS = 2
# RTP's video clock (RFC 3551).
RTP_VIDEO_CLOCK = 90000


@dataclass
class SessionLog:
    """What one session sent and saw, on this process's perf_counter clock."""

    sent_t: list[float] = field(default_factory=list)
    sent_level: list[float] = field(default_factory=list)
    # Every video frame as it arrived (its last RTP packet) and its timestamp (seconds).
    arrival: list[float] = field(default_factory=list)
    due: list[float] = field(default_factory=list)
    # A watched session's decoded frames: when each was decoded, the mouth region's luma.
    mouth_t: list[float] = field(default_factory=list)
    mouth: list[float] = field(default_factory=list)
    audio_packets: int = 0
    # Frames the server showed idle because their lip-sync was late, over the counted span
    # (from the session's own figures; a server that does not report them: 0).
    server_late: int = 0


class _Unwrapped:
    """RTP's 32-bit timestamps as one rising count."""

    def __init__(self) -> None:
        self._last: int | None = None
        self._total = 0

    def __call__(self, stamp: int) -> int:
        if self._last is not None:
            self._total += (stamp - self._last + 2**31) % 2**32 - 2**31
        self._last = stamp
        return self._total


def _count_packets(receiver: Any, log: SessionLog, kind: str, decode: bool) -> None:
    """Notes each video frame as its last packet arrives (RTP's marker bit) and counts
    audio packets; the packets go on to aiortc's decoders only when `decode`. A browser
    decodes on its own machine: decoding every session here would charge the server's
    CPU with the clients' work."""
    forward = receiver._handle_rtp_packet
    stamps = _Unwrapped()
    last: list[int] = []

    async def handle(packet: Any, arrival_time_ms: int) -> None:
        if kind == "audio":
            log.audio_packets += 1
        elif packet.marker and packet.timestamp not in last:  # a retransmission: once
            log.arrival.append(time.perf_counter())
            log.due.append(stamps(packet.timestamp) / RTP_VIDEO_CLOCK)
            last[:] = [packet.timestamp]
        if decode:
            await forward(packet, arrival_time_ms)

    receiver._handle_rtp_packet = handle


async def _watch_video(track: Any, log: SessionLog, region: tuple[int, int, int, int]) -> None:
    x, y, w, h = region
    while True:
        frame = await track.recv()
        log.mouth_t.append(time.perf_counter())
        gray = frame.to_ndarray(format="gray")
        log.mouth.append(float(gray[y : y + h, x : x + w].mean()))


async def _drain(track: Any) -> None:
    while True:
        await track.recv()


async def _late_frames(client: httpx.AsyncClient, session_id: str) -> int | None:
    """The session's late frames so far by its server (None: it does not say)."""
    with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
        reply = await client.get(f"/v1/sessions/{session_id}")
        if reply.status_code == 200:
            return int(reply.json()["late_frames"])
    return None


async def one_session(
    client: httpx.AsyncClient,
    avatar_id: str,
    pcm: np.ndarray,
    start_at: float,
    region: tuple[int, int, int, int],
    watch: bool = True,
) -> SessionLog:
    """One session: created, connected over WebRTC, fed `pcm` (int16) in real time from
    `start_at` (perf_counter), received until TAIL_S after, deleted. Every frame's arrival
    is noted; a watched session's frames are decoded too, for the mouth."""
    from aiortc import RTCPeerConnection, RTCSessionDescription  # the live path's client
    from websockets.asyncio.client import connect

    created = await client.post("/v1/sessions", json={"avatar_id": avatar_id})
    created.raise_for_status()
    session_id = created.json()["id"]
    log = SessionLog()
    pc = RTCPeerConnection()
    tracks: dict[str, Any] = {}
    arrived = asyncio.Event()

    @pc.on("track")
    def on_track(track: Any) -> None:
        tracks[track.kind] = track
        if len(tracks) == 2:
            arrived.set()

    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    receivers: list[asyncio.Task[None]] = []
    try:
        await pc.setLocalDescription(await pc.createOffer())
        answer = await client.post(
            f"/v1/sessions/{session_id}/webrtc",
            json={"sdp": pc.localDescription.sdp, "type": pc.localDescription.type},
        )
        answer.raise_for_status()
        await pc.setRemoteDescription(RTCSessionDescription(**answer.json()))
        for transceiver in pc.getTransceivers():
            _count_packets(transceiver.receiver, log, transceiver.kind, decode=watch)
        await asyncio.wait_for(arrived.wait(), START_DEADLINE_S)
        if watch:
            receivers = [
                asyncio.create_task(_watch_video(tracks["video"], log, region)),
                asyncio.create_task(_drain(tracks["audio"])),
            ]
        ws_url = str(client.base_url).replace("http", "ws", 1).rstrip("/")
        headers = {k: v for k, v in client.headers.items() if k.lower() == "authorization"}
        async with connect(
            f"{ws_url}/v1/sessions/{session_id}/audio", additional_headers=headers
        ) as socket_:
            chunk = round(CHUNK_S * SPEECH_RATE)
            late_before: int | None = None
            settled = int(SETTLE_S / CHUNK_S)
            for index, begin in enumerate(range(0, pcm.size, chunk)):
                # Real time: each 20 ms block leaves when a microphone would have filled it.
                await asyncio.sleep(max(0.0, start_at + index * CHUNK_S - time.perf_counter()))
                block = pcm[begin : begin + chunk]
                log.sent_t.append(time.perf_counter())
                log.sent_level.append(float(np.sqrt(np.mean((block / 32768.0) ** 2))))
                await socket_.send(block.astype("<i2").tobytes())
                if index == settled:
                    late_before = await _late_frames(client, session_id)
            late_after = await _late_frames(client, session_id)
            if late_before is not None and late_after is not None:
                log.server_late = late_after - late_before
            await asyncio.sleep(
                max(0.0, start_at + pcm.size / SPEECH_RATE + TAIL_S - time.perf_counter())
            )
    finally:
        for task in receivers:
            task.cancel()
        await asyncio.gather(*receivers, return_exceptions=True)
        await pc.close()
        with contextlib.suppress(httpx.HTTPError):
            await client.delete(f"/v1/sessions/{session_id}")
    return log


def watched_delay(logs: list[SessionLog]) -> float | None:
    """The onset delay of the first watched session where one is seen."""
    for log in logs:
        if log.mouth:
            delay = onset_delay(
                np.array(log.sent_t),
                np.array(log.sent_level),
                np.array(log.mouth_t),
                np.array(log.mouth),
            )
            if delay is not None:
                return delay
    return None


def round_from_logs(n: int, logs: list[SessionLog], start: float, stop: float) -> Round:
    """The figures of N sessions whose speech ran from `start` to `stop` (perf_counter):
    frames that arrived from SETTLE_S after the start to the stop count. Each session owes
    the avatar's fps over that window; frames it never got count as late, and so do frames
    its server showed idle because their lip-sync was late. Latency: the watched session's
    onset delay, plus each frame's own arrival jitter, in every session."""
    period = 1.0 / AVATAR_FPS
    seconds = stop - start - SETTLE_S
    owed = round(seconds * AVATAR_FPS)
    delay = watched_delay(logs)
    frames, late_frames, counted = 0, 0.0, 0
    latencies: list[float] = []
    for log in logs:
        arrival, due = np.array(log.arrival), np.array(log.due)
        window = (arrival >= start + SETTLE_S) & (arrival <= stop)
        count = int(window.sum())
        frames += count
        late = late_fraction(arrival[window], due[window], period) * count if count else 0.0
        late_frames += min(float(max(owed, count)), late + log.server_late + max(0, owed - count))
        counted += max(owed, count)
        if delay is not None and count >= 3:
            latencies.extend(frame_latencies(delay, arrival[window], due[window]))
    return Round(
        sessions=n,
        fps=frames / seconds,
        late=min(1.0, late_frames / counted) if counted else 1.0,
        latency_p50_s=percentile(latencies, 50),
        latency_p95_s=percentile(latencies, 95),
    )


async def live_round(
    servers: list[tuple[str, str]],
    api_key: str,
    pcm: np.ndarray,
    n: int,
    region: tuple[int, int, int, int],
) -> Round:
    """N sessions spread round robin over `servers`, each (base URL, its avatar id)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=url, headers=headers, timeout=60.0)
            )
            for url, _ in servers
        ]
        # Every session connects first; the speech of all starts at the same moment.
        start = time.perf_counter() + 3.0 + 0.2 * n
        stop = start + pcm.size / SPEECH_RATE
        pids = [SERVER_PIDS[url] for url, _ in servers if url in SERVER_PIDS]
        cpu = asyncio.create_task(_cpu_while_counted(pids, start + SETTLE_S, stop))
        # One session is watched (its frames decoded, for the latency); every session's
        # frames are timed as they arrive.
        logs = await asyncio.gather(
            *(
                one_session(
                    clients[index % len(servers)],
                    servers[index % len(servers)][1],
                    pcm,
                    start,
                    region,
                    watch=index == 0,
                )
                for index in range(n)
            )
        )
    counted = round_from_logs(n, list(logs), start, stop)
    cpu_s = await cpu
    if cpu_s is None or counted.fps <= 0:
        return counted
    return replace(counted, cpu_s_per_frame=cpu_s / (counted.fps * (stop - start - SETTLE_S)))


async def _cpu_while_counted(pids: list[int], start: float, stop: float) -> float | None:
    """CPU seconds of processes `pids` and this one from `start` to `stop` (perf_counter):
    the window whose frames a round counts. None without a process (no server here)."""
    if not pids:
        return None

    def now() -> float:
        return sum(cpu_seconds(pid) for pid in pids) + time.process_time()

    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    before = now()
    await asyncio.sleep(max(0.0, stop - time.perf_counter()))
    return now() - before


@dataclass(frozen=True)
class CpuPerFrame:
    """CPU seconds per frame received, CODEC_SESSIONS sessions with speech: in the server's
    process and this process's receiving side (`path`), and in the model's processes too
    (`whole`)."""

    path: float
    whole: float


def cpu_per_frame(
    base: str,
    api_key: str,
    avatar_id: str,
    pcm: np.ndarray,
    region: tuple[int, int, int, int],
    model_pids: list[int],
) -> CpuPerFrame | None:
    """CODEC_SESSIONS sessions with speech, none decoded. `path` counts the server's process
    (frame reads, mel windows, composite, the VP8 and Opus encoders, RTP and SRTP, its gRPC
    client or, naive, the model too) and this process's receiving side (RTP and SRTP: on
    this one machine the clients' transport shares the CPU); `whole` adds `model_pids`
    (Triton and its stubs). None for a server not started here."""
    pid = SERVER_PIDS.get(base)
    if pid is None:
        return None
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def sessions() -> list[SessionLog]:
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60.0) as client:
            start = time.perf_counter() + 3.0
            return await asyncio.gather(
                *(
                    one_session(client, avatar_id, pcm, start, region, watch=False)
                    for _ in range(CODEC_SESSIONS)
                )
            )

    def model_side() -> float:
        return sum(cpu_seconds(each) for each in model_pids if Path(f"/proc/{each}").exists())

    server, client, model = cpu_seconds(pid), time.process_time(), model_side()
    logs = asyncio.run(sessions())
    path = cpu_seconds(pid) - server + time.process_time() - client
    whole = path + model_side() - model
    frames = sum(len(log.arrival) for log in logs)
    return CpuPerFrame(path / frames, whole / frames) if frames else None
