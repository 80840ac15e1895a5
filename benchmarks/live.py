"""Live sessions at scale: how many talk at once in real time, against a naive loop.

    python -m benchmarks.live [--quick] [--triton-url HOST:PORT] [--lipsync-model NAME]
                              [--seconds S] [--size PX] [--max-sessions N]
                              [--server-url URL [--avatar-id ID] [--api-key KEY]]
                              [--batch-backlog J [--backlog-sessions N] [--backlog-repeats R]]
                              [--frames-per-request K] [--replicas R]

One run, one local Triton (started here unless --triton-url names one), one `dh serve`
started here against it. For N sessions at once, each streams continuous speech (no pause
over 0.2 s) in real time up its WebSocket as 16 kHz PCM and receives its frames over
WebRTC with an aiortc client. For each N it prints the aggregate frames per second, the
late-frame percentage and the latency from audio in to frame out (p50, p95); then the
largest N with < 1 % late frames, the same for the naive architecture
(benchmarks/naive_live.py: a server whose sessions are each a thread calling onnxruntime
in process at batch 1, with the same WebSocket in and WebRTC out, measured by the same
client), and the ratio of the frames per second the sessions sustain to the limit
1/(1/model + 1/codec): model is the lip-sync model alone at saturation on Triton; codec is
the live path's own per-frame work alone, no model: the cores over the CPU seconds per
frame it spent in the round of the largest passing N, counted in the server's process
(frame read, mel window, composite, the WebRTC video and audio encoders, RTP and SRTP, its
gRPC client) and in the receiving side's transport, which shares this machine (Triton's
process, the model's side, is not counted). At that load, because a session's fixed costs
(its clock, its tasks, packets per second) weigh per frame by how many share the machine:
taken at fewer sessions, the limit would be one this load never had, and the ratio could
pass 1. Both are measured in this run. (An encoder-only
rate, composite and VP8 on identical frames, is reported as codec_encoder_fps: VP8 all but
skips a picture that does not change, so it bounds nothing.) Then the whole machine's
CPU per frame of each architecture at the same CODEC_SESSIONS sessions, Triton's
processes included for the live path: the steadier comparison, since near capacity a
single stall of the machine decides whether a round passes. The last line is one JSON
object with every figure.

With --batch-backlog J, N sessions (--backlog-sessions, default the largest passing N, at
least 1) run R more times (--backlog-repeats) on each of two fresh `dh serve`s while J
batch jobs (BACKLOG_SPEECH_S of speech each, all rendering at once, submitted anew each
round) keep the lipsync model's queue full: one with DH_LIVE_PRIORITY on (live frames ask
Triton for its highest priority), one with it off; the mean late-frame fraction of each
goes into the JSON under "backlog", with the round trip of live requests behind a batch
client's backlog at Triton alone (no orchestrator, no codec), priority on and off.
--frames-per-request sets the servers' DH_LIVE_FRAMES_PER_REQUEST (default: theirs).
--replicas R spreads the live sessions round robin over R `dh serve` processes on the one
Triton (a fleet on one host: one process's interpreter caps what it carries; the naive
server stays one process, the CPU-per-frame round uses the first).

Latency is read from the pictures: a session is silent until its speech starts and the
avatar is still, so the delay from the first loud block sent to the first frame whose
mouth changes is the constant part, and each frame's arrival jitter the rest. A model
whose mouth does not change with speech leaves the latency unmeasured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks import model_rate
from benchmarks.codec_rate import fixed_face
from benchmarks.common import REPO, WAV2LIP_MODEL, triton_for_benchmark, wav2lip_onnx
from orchestrator.live.tracks import video_frame
from orchestrator.models import load_served_models
from orchestrator.pipeline.avatar_cache import Avatar
from orchestrator.pipeline.composite import composite_frame
from orchestrator.pipeline.runner import Engine
from orchestrator.settings import Settings
from orchestrator.triton import DEFAULT_PRIORITY, HIGHEST_PRIORITY, ModelSpec, TritonClient
from synthmedia.audio import SPEECH_RATE, continuous_speech, write_audio
from synthmedia.avatar import mouth_region, write_avatar_video

AVATAR_FPS = 25
AVATAR_SECONDS = 4.0
DEFAULT_SIZE = 256
# Speech streamed per session; quick: a smoke run.
DEFAULT_SECONDS, QUICK_SECONDS = 12.0, 4.0
# The WebSocket carries 20 ms of PCM per message, as a browser's audio worklet sends it.
CHUNK_S = 0.02
# Frames are counted from this long after the speech starts (the pipeline fills first) ...
SETTLE_S = 1.0
# ... and received for this long after it ends, so the last ones arrive.
TAIL_S = 1.5
# A frame is late when it arrives later than this after its schedule: the schedule is the
# frame's timestamp anchored at the fastest deliveries (5th percentile), and this is the
# jitter a browser's buffer absorbs without a visible stall.
LATE_S = 0.1
ANCHOR_PERCENTILE = 5
# A frame timestamp gap over this many frame periods means frames never came: late too.
GAP_PERIODS = 1.5
# Sessions of the round that measures the live path's CPU per frame (well below capacity).
CODEC_SESSIONS = 2
# N passes while fewer than this fraction of its frames are late.
LATE_LIMIT = 0.01
DEFAULT_MAX_SESSIONS = 32
# The mouth must change within this long of the speech's start: the onset's search.
MAX_LAG_S = 3.0
# The onset of speech: the first block this loud against the loudest. The mouth's change
# in speech must exceed its change at rest (codec noise) this many times over, and this
# many grey levels, to count.
ONSET_FRACTION, ONSET_MARGIN, MIN_CHANGE = 0.1, 2.0, 0.5
START_DEADLINE_S, READY_DEADLINE_S, POLL_S = 60.0, 300.0, 0.1
# RTP's video clock (RFC 3551).
RTP_VIDEO_CLOCK = 90000
PR_SET_PDEATHSIG = 1
EXIT_REFUSED = 2
# Speech per batch job of --batch-backlog: longer than a round, so the jobs' lipsync
# requests queue at Triton for all of it (the JSON says how many still ran at its end).
BACKLOG_SPEECH_S = 60.0


def _step(message: str) -> None:
    print(f"[live] {message}", file=sys.stderr, flush=True)


# --- pure parts: statistics, the search over N, the summary -------------------------


def late_fraction(arrival_s: np.ndarray, due_s: np.ndarray, period_s: float) -> float:
    """Fraction of frames late: arriving over LATE_S after their schedule (`due_s`, in any
    clock, anchored here at the fastest deliveries), or missing (gaps in `due_s`)."""
    arrival_s, due_s = np.asarray(arrival_s, float), np.asarray(due_s, float)
    if arrival_s.size == 0:
        return 1.0
    offset = arrival_s - due_s
    late = int((offset - np.percentile(offset, ANCHOR_PERCENTILE) > LATE_S).sum())
    gaps = np.diff(np.sort(due_s)) / period_s
    missing = int(np.clip(np.round(gaps[gaps > GAP_PERIODS]) - 1, 0, None).sum())
    return (late + missing) / (arrival_s.size + missing)


def onset_delay(
    level_t: np.ndarray, level: np.ndarray, frame_t: np.ndarray, mouth: np.ndarray
) -> float | None:
    """Seconds from the first loud audio sent (at `level_t`, loudness `level`) to the first
    frame (arrived at `frame_t`) whose mouth region (mean luma `mouth`) has changed from its
    look at rest by more than half its typical change in speech, and by more than any frame
    before the speech; None when speech changes it no more than rest does.

    A session is silent until its speech starts and the benchmark's avatar is still, so the
    onset is unambiguous, and it holds for any model that changes the mouth with speech (a
    correlation with loudness would hold only for a model that darkens it with loudness,
    and speech's loudness rises and falls with its syllables nearly periodically, so the
    best delay can be a syllable off)."""
    level_t, level = np.asarray(level_t, float), np.asarray(level, float)
    frame_t, mouth = np.asarray(frame_t, float), np.asarray(mouth, float)
    if level.size == 0:
        return None
    loud = np.flatnonzero(level >= ONSET_FRACTION * level.max())
    if loud.size == 0:
        return None
    first = level_t[loud[0]]
    before = frame_t < first
    after = (frame_t >= first) & (frame_t <= first + MAX_LAG_S)
    if before.sum() < 3 or not after.any():
        return None
    change = np.abs(mouth - float(np.median(mouth[before])))
    rest, speaking = float(change[before].max()), float(np.percentile(change[after], 90))
    if speaking <= ONSET_MARGIN * rest + MIN_CHANGE:
        return None
    crossed = np.flatnonzero(after & (change > max(rest, speaking / 2)))
    return float(frame_t[crossed[0]] - first) if crossed.size else None


def frame_latencies(delay_s: float, arrival_s: np.ndarray, due_s: np.ndarray) -> np.ndarray:
    """Each frame's latency: the session's delay (the typical frame's) plus how much later
    or sooner than typical the frame arrived against its own timestamp."""
    offset = np.asarray(arrival_s, float) - np.asarray(due_s, float)
    latencies: np.ndarray = delay_s + offset - float(np.median(offset))
    return latencies


def percentile(values: list[float] | np.ndarray, q: float) -> float | None:
    values = np.asarray(values, float)
    return float(np.percentile(values, q)) if values.size else None


@dataclass(frozen=True)
class Round:
    """N sessions at once: frames per second of all together, the late fraction, latency
    percentiles, and the CPU seconds per frame received spent in the servers' processes and
    this client over the same frames (None where unmeasured: a server not started here)."""

    sessions: int
    fps: float
    late: float
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    cpu_s_per_frame: float | None = None

    @property
    def passed(self) -> bool:
        return self.late < LATE_LIMIT


def next_count(rounds: dict[int, Round], ceiling: int) -> int | None:
    """The next N to try: doubling from 1 while N passes, then halving the interval between
    the largest passing and the smallest failing N; None when that interval is closed (or
    the ceiling passes)."""
    if not rounds:
        return 1
    passing = [n for n, r in rounds.items() if r.passed]
    failing = [n for n, r in rounds.items() if not r.passed]
    good = max(passing, default=0)
    bad = min((n for n in failing if n > good), default=None)
    if bad is None:
        if good >= ceiling:
            return None
        return min(good * 2, ceiling)
    if bad - good <= 1:
        return None
    return (good + bad) // 2


def largest_passing(rounds: dict[int, Round]) -> int:
    """The largest N with < 1 % late frames below which every N tried passed too (0: none)."""
    largest = 0
    for n in sorted(rounds):
        if not rounds[n].passed:
            break
        largest = n
    return largest


def search(measure: Callable[[int], Round], ceiling: int) -> dict[int, Round]:
    rounds: dict[int, Round] = {}
    while (n := next_count(rounds, ceiling)) is not None:
        rounds[n] = measure(n)
    return rounds


def codec_rate(
    live_rounds: dict[int, Round], live_cpu: CpuPerFrame | None, encoder_fps: float
) -> float:
    """The live path's rate alone: the machine's cores over its CPU seconds per frame, at
    the load of the largest passing N (fixed costs per session, per second and per packet
    spread over that many frames, as in the round the ratio is taken of); at
    CODEC_SESSIONS sessions where no round passed or none was measured; the encoder's
    rate where neither was."""
    best = live_rounds.get(largest_passing(live_rounds))
    cores = os.cpu_count() or 1
    if best is not None and best.cpu_s_per_frame:
        return cores / best.cpu_s_per_frame
    return cores / live_cpu.path if live_cpu else encoder_fps


def limit_fps(model: float, codec: float) -> float:
    """Model and codec sharing one machine's CPU: their rates combined as serial work."""
    return 1.0 / (1.0 / model + 1.0 / codec)


def summary(
    live: dict[int, Round], naive: dict[int, Round], model_fps: float, codec_fps: float
) -> dict[str, Any]:
    """Every figure of the run; the issue's four first."""
    best = largest_passing(live)
    sustained = live[best] if best else None
    limit = limit_fps(model_fps, codec_fps)
    return {
        "live_sessions_max": best,
        "live_sessions_naive": largest_passing(naive),
        "live_latency_p95_s": sustained.latency_p95_s if sustained else None,
        "live_ratio_limit": sustained.fps / limit if sustained else 0.0,
        "live_latency_p50_s": sustained.latency_p50_s if sustained else None,
        "live_fps": sustained.fps if sustained else 0.0,
        "limit_fps": limit,
        "model_triton_fps": model_fps,
        "codec_fps": codec_fps,
        "rounds": [asdict(r) for r in live.values()],
        "naive_rounds": [asdict(r) for r in naive.values()],
    }


def render_row(kind: str, r: Round) -> str:
    def seconds(value: float | None) -> str:
        return "   –  " if value is None else f"{value:6.3f}"

    cpu = "" if r.cpu_s_per_frame is None else f"  cpu {1000 * r.cpu_s_per_frame:5.2f} ms/frame"
    return (
        f"{kind:6} N={r.sessions:3}  {r.fps:7.1f} fps  late {100 * r.late:5.1f} %  "
        f"latency p50 {seconds(r.latency_p50_s)} s  p95 {seconds(r.latency_p95_s)} s"
        f"  {'ok' if r.passed else 'LATE'}{cpu}"
    )


# --- the live path: `dh serve` and aiortc clients ----------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@contextlib.contextmanager
def serve(settings: dict[str, str], log: Path) -> Iterator[str]:
    """`dh serve` of this checkout on a free loopback port; yields its base URL."""
    port = _free_port()
    env = {"DH_HOST": "127.0.0.1", "DH_PORT": str(port), **settings}
    with _server(["orchestrator.cli", "serve"], env, port, log) as base:
        yield base


@contextlib.contextmanager
def serve_naive(onnx_file: Path, avatar: Avatar, mode: str, log: Path) -> Iterator[str]:
    """benchmarks.naive_live (the architecture replaced) on a free loopback port."""
    port = _free_port()
    args = ["benchmarks.naive_live", str(port), str(onnx_file), str(avatar.directory), mode]
    with _server(args, {}, port, log) as base:
        yield base


# The process behind each base URL a server started here answers on (for its CPU time).
_SERVER_PIDS: dict[str, int] = {}


@contextlib.contextmanager
def _server(module: list[str], settings: dict[str, str], port: int, log: Path) -> Iterator[str]:
    """`python -m <module...>` listening on `port` once /healthz answers; yields its base URL.
    Stopped by its own PID: SIGTERM, a bounded wait, then SIGKILL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DH_")}
    env.update(settings)
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", *module],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{module[0]} exited:\n{log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/healthz", timeout=2.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"{module[0]} not up in {START_DEADLINE_S} s")
            time.sleep(POLL_S)
        _SERVER_PIDS[base] = process.pid
        yield base
    finally:
        _SERVER_PIDS.pop(base, None)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def register_avatar(base: str, video: Path, api_key: str = "") -> str:
    """Uploads `video` as an avatar and waits until it is prepared; returns its id."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=base, headers=headers, timeout=60.0) as client:
        reply = client.post("/v1/avatars", files={"video": (video.name, video.read_bytes())})
        reply.raise_for_status()
        avatar_id = str(reply.json()["id"])
        deadline = time.monotonic() + READY_DEADLINE_S
        while (state := client.get(f"/v1/avatars/{avatar_id}").json()["state"]) == "preparing":
            if time.monotonic() > deadline:
                raise SystemExit("the avatar was not prepared in time")
            time.sleep(POLL_S)
        if state != "ready":
            raise SystemExit(f"the avatar could not be prepared: {state}")
    return avatar_id


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
        pids = [_SERVER_PIDS[url] for url, _ in servers if url in _SERVER_PIDS]
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
        return sum(_cpu_seconds(pid) for pid in pids) + time.process_time()

    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    before = now()
    await asyncio.sleep(max(0.0, stop - time.perf_counter()))
    return now() - before


# --- model alone, codec alone, and the naive loop -----------------------------------------


def _encoder() -> Any:
    from aiortc.codecs.vpx import Vp8Encoder  # what aiortc negotiates with browsers first

    return Vp8Encoder()


def _box(avatar: Avatar, index: int) -> tuple[int, int, int, int] | None:
    row = avatar.boxes[index]
    return None if row[0] < 0 else (int(row[0]), int(row[1]), int(row[2]), int(row[3]))


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of process `pid` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(root: int) -> set[int]:
    """Every process below `root` (from /proc; processes that end meanwhile are skipped)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def model_side_pids() -> list[int]:
    """The processes this run started that are neither a server of `_server` nor below one:
    the local Triton and its backend stubs (nothing, with --triton-url)."""
    servers = set(_SERVER_PIDS.values())
    below = set().union(*(_descendants(pid) for pid in servers)) if servers else set()
    return sorted(_descendants(os.getpid()) - servers - below)


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
    pid = _SERVER_PIDS.get(base)
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
        return sum(_cpu_seconds(each) for each in model_pids if Path(f"/proc/{each}").exists())

    server, client, model = _cpu_seconds(pid), time.process_time(), model_side()
    logs = asyncio.run(sessions())
    path = _cpu_seconds(pid) - server + time.process_time() - client
    whole = path + model_side() - model
    frames = sum(len(log.arrival) for log in logs)
    return CpuPerFrame(path / frames, whole / frames) if frames else None


def codec_fps(avatar: Avatar, face_size: int, frames: int, threads: int) -> float:
    """Frames/s of the encoder part of the live path alone: an avatar frame, a generated
    face composited in, the frame through the WebRTC video encoder; one encoder per thread
    (per session), `threads` at once as sessions would run. On a still avatar and a fixed
    face every frame is the same picture, which VP8 all but skips: an upper bound, kept as
    `codec_encoder_fps`; the limit takes the live path's measured CPU per frame."""
    face = fixed_face(face_size)

    def work(count: int) -> None:
        encoder = _encoder()
        with avatar.open_frames() as store:
            for index in range(count):
                at = index % avatar.frame_count
                frame = store.read(at)
                box = _box(avatar, at)
                if box is not None:
                    frame = composite_frame(frame, box, face)
                encoder.encode(video_frame(frame, index, Fraction(AVATAR_FPS)))

    each = max(1, frames // threads)
    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(each,)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return each * threads / (time.perf_counter() - started)


# --- live sessions next to a batch backlog ----------------------------------------------


def _job_states(client: httpx.Client, job_ids: list[str]) -> list[str]:
    return [str(client.get(f"/v1/jobs/{job_id}").json()["state"]) for job_id in job_ids]


@contextlib.contextmanager
def batch_backlog(
    base: str, api_key: str, avatar_id: str, audio: Path, jobs: int
) -> Iterator[Callable[[], int]]:
    """`jobs` batch jobs on the avatar, submitted and rendering (all running) when this
    enters; yields a function counting those still running; cancels them on leaving."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=base, headers=headers, timeout=60.0) as client:
        job_ids = []
        for _ in range(jobs):
            reply = client.post(
                "/v1/jobs",
                files={"audio": (audio.name, audio.read_bytes())},
                data={"avatar_id": avatar_id},
            )
            reply.raise_for_status()
            job_ids.append(str(reply.json()["id"]))
        deadline = time.monotonic() + READY_DEADLINE_S
        while (states := _job_states(client, job_ids)).count("running") < jobs:
            if any(state not in ("queued", "running") for state in states):
                raise SystemExit(f"a backlog job stopped before the round: {states}")
            if time.monotonic() > deadline:
                raise SystemExit(f"the backlog jobs did not all start: {states}")
            time.sleep(POLL_S)
        try:
            yield lambda: _job_states(client, job_ids).count("running")
        finally:
            for job_id in job_ids:
                with contextlib.suppress(httpx.HTTPError):
                    client.delete(f"/v1/jobs/{job_id}")


async def live_requests_behind_backlog(
    settings: Settings, frames_per_request: int, seconds: float
) -> dict[str, Any]:
    """Triton alone: the round trip of a live session's lipsync requests (one every
    `frames_per_request` frame periods) while a batch client keeps its requests of
    DH_LIPSYNC_BATCH_SIZE frames queued at the model (DH_TRITON_MAX_IN_FLIGHT of them), with
    the live requests at Triton's highest priority and at the default. No orchestrator and
    no codec: what the priority does to the model's queue, apart from CPU shared with them."""
    async with TritonClient(settings.triton_url) as probe:
        served = await load_served_models(probe, settings)
    figures: dict[str, Any] = {"live_request_frames": frames_per_request}
    for label, priority in (("on", HIGHEST_PRIORITY), ("off", DEFAULT_PRIORITY)):
        round_trips = await _round_trips_behind_backlog(
            settings, served.lipsync, served.face_size, frames_per_request, priority, seconds
        )
        figures[f"live_request_p50_s_priority_{label}"] = percentile(round_trips, 50)
        figures[f"live_request_p95_s_priority_{label}"] = percentile(round_trips, 95)
    return figures


async def _round_trips_behind_backlog(
    settings: Settings,
    lipsync: ModelSpec,
    face_size: int,
    frames_per_request: int,
    priority: int,
    seconds: float,
) -> list[float]:
    batch_inputs = model_rate.lipsync_inputs(
        min(settings.lipsync_batch_size, lipsync.max_batch_size), face_size
    )
    live_inputs = model_rate.lipsync_inputs(frames_per_request, face_size)
    period_s = frames_per_request / AVATAR_FPS
    in_flight = settings.triton_max_in_flight
    stop, flowing = asyncio.Event(), asyncio.Event()
    round_trips: list[float] = []
    async with (
        TritonClient(settings.triton_url, max_in_flight=in_flight) as bulk,
        TritonClient(settings.triton_url, priority=priority) as live,
    ):

        async def backlog() -> None:
            while not stop.is_set():
                await bulk.infer(lipsync.name, batch_inputs, ["pred"])
                flowing.set()

        async def one() -> None:
            started = time.perf_counter()
            await live.infer(lipsync.name, live_inputs, ["pred"])
            round_trips.append(time.perf_counter() - started)

        async with asyncio.TaskGroup() as group:
            for _ in range(in_flight):
                group.create_task(backlog())
            await flowing.wait()  # a batch answered: the queue holds the rest behind it
            begin = time.perf_counter()
            for index in range(int(seconds / period_s)):
                # The live requests leave on the clock, as a session's planner sends them.
                await asyncio.sleep(max(0.0, begin + index * period_s - time.perf_counter()))
                group.create_task(one())
            stop.set()
    return round_trips


def backlog_rounds(
    plan: Plan,
    env: dict[str, str],
    work: Path,
    video: Path,
    pcm: np.ndarray,
    n: int,
    out: Callable[[str], None],
) -> dict[str, Any]:
    """N sessions while `plan.batch_backlog` batch jobs render, with DH_LIVE_PRIORITY on
    and off (a fresh `dh serve` each, on the same Triton)."""
    audio = work / "backlog.wav"
    write_audio(audio, continuous_speech(BACKLOG_SPEECH_S, seed=1))
    region = mouth_region((plan.size, plan.size))
    rounds: dict[str, Any] = {"jobs": plan.batch_backlog, "sessions": n}
    for priority in (True, False):
        label = "on" if priority else "off"
        settings = {
            **env,
            "DH_LIVE_PRIORITY": str(priority).lower(),
            # Every job renders at once: the backlog is at Triton, not in the job queue.
            "DH_MAX_RUNNING_JOBS": str(max(1, plan.batch_backlog)),
            "DH_MAX_SESSIONS": str(n),
            "DH_DATA_DIR": str(work / f"server-data-priority-{label}"),
        }
        with serve(settings, work / f"serve-priority-{label}.log") as base:
            avatar_id = register_avatar(base, video)
            results, still = [], []
            for _ in range(plan.backlog_repeats):
                _step(f"{n} live session(s), {plan.batch_backlog} batch job(s), priority {label}")
                with batch_backlog(base, "", avatar_id, audio, plan.batch_backlog) as running:
                    result = asyncio.run(live_round([(base, avatar_id)], "", pcm, n, region))
                    still.append(running())
                out(
                    f"{render_row('backlog', result)}  priority {label}, "
                    f"{still[-1]} job(s) still running"
                )
                results.append(result)
        rounds[f"late_priority_{label}"] = float(np.mean([r.late for r in results]))
        rounds[f"rounds_priority_{label}"] = [asdict(r) for r in results]
        # Fewer than J at a round's end: the backlog did not cover all of that round.
        rounds[f"jobs_running_after_priority_{label}"] = still
    return rounds


# --- the run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    seconds: float
    size: int
    lipsync_model: str
    max_sessions: int
    model_frames: int
    # A running service to measure instead of a `dh serve` started here, and its avatar
    # (the astronaut avatar of --size, prepared there) and key.
    server_url: str | None = None
    avatar_id: str | None = None
    api_key: str = ""
    # Batch jobs rendering during the backlog rounds (0: none run), the sessions then
    # (None: the largest passing N) and the rounds of each priority setting.
    batch_backlog: int = 0
    backlog_sessions: int | None = None
    backlog_repeats: int = 1
    # The servers' DH_LIVE_FRAMES_PER_REQUEST (None: their default).
    frames_per_request: int | None = None
    # `dh serve` processes on the one Triton that the live sessions are spread over.
    replicas: int = 1


def _onnx_file(model: str) -> Path:
    if model == WAV2LIP_MODEL:
        return wav2lip_onnx()
    return REPO / "model_repository" / model / "1" / "model.onnx"


def run(plan: Plan, triton_url: str | None, out: Callable[[str], None]) -> int:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dh-live-") as scratch:
        work = Path(scratch)
        video = work / "avatar.mp4"
        size = (plan.size, plan.size)
        # Still: the avatar's own motion would move the mouth region as much as speech.
        write_avatar_video(video, seconds=AVATAR_SECONDS, fps=AVATAR_FPS, size=size, still=True)
        speech = continuous_speech(plan.seconds)
        pcm = np.round(np.clip(speech, -1, 1) * 32767).astype(np.int16)
        with triton_for_benchmark(work, triton_url, wav2lip=True) as (grpc_url, _):
            settings = Settings(
                triton_url=grpc_url, lipsync_model=plan.lipsync_model, data_dir=work / "data"
            )
            _step("model alone at saturation, codec alone, avatar prepared in process")
            model_fps, encoder_fps, avatar, mode = asyncio.run(_alone(settings, video, plan))
            env = {
                "DH_TRITON_URL": grpc_url,
                "DH_LIPSYNC_MODEL": plan.lipsync_model,
                "DH_DATA_DIR": str(work / "server-data"),
                # The search goes up to --max-sessions: the server must take that many.
                "DH_MAX_SESSIONS": str(plan.max_sessions),
            }
            if plan.frames_per_request is not None:
                env["DH_LIVE_FRAMES_PER_REQUEST"] = str(plan.frames_per_request)
            with contextlib.ExitStack() as stack:
                base = plan.server_url or stack.enter_context(serve(env, work / "serve.log"))
                # More processes on the one Triton: each its own data directory and avatar.
                others = [
                    stack.enter_context(
                        serve(
                            {**env, "DH_DATA_DIR": str(work / f"server-data-{r}")},
                            work / f"serve-{r}.log",
                        )
                    )
                    for r in range(1, plan.replicas)
                ]
                headers = {"Authorization": f"Bearer {plan.api_key}"} if plan.api_key else {}
                with httpx.Client(base_url=base, headers=headers, timeout=10.0) as probe:
                    if "/v1/sessions" not in probe.get("/openapi.json").json()["paths"]:
                        print(
                            f"benchmarks.live: refused: {base} has no /v1/sessions",
                            file=sys.stderr,
                        )
                        return EXIT_REFUSED
                avatar_id = plan.avatar_id or register_avatar(base, video, plan.api_key)
                targets = [(base, avatar_id)]
                targets += [(url, register_avatar(url, video, plan.api_key)) for url in others]
                region = mouth_region(size)

                def live(n: int) -> Round:
                    _step(f"{n} live session(s) on {len(targets)} server process(es)")
                    result = asyncio.run(live_round(targets, plan.api_key, pcm, n, region))
                    out(render_row("live", result))
                    return result

                live_rounds = search(live, plan.max_sessions)
                _step("CPU per frame of the live path, outside the model and in all")
                live_cpu = cpu_per_frame(
                    base, plan.api_key, avatar_id, pcm, region, model_side_pids()
                )
            codec = codec_rate(live_rounds, live_cpu, encoder_fps)

            backlog = None
            if plan.batch_backlog and plan.server_url:
                _step("--batch-backlog needs the dh serve started here (it sets its settings)")
            elif plan.batch_backlog:
                n = plan.backlog_sessions or max(1, largest_passing(live_rounds))
                backlog = backlog_rounds(plan, env, work, video, pcm, n, out)
                _step("live requests behind a batch backlog at Triton alone")
                alone = asyncio.run(
                    live_requests_behind_backlog(
                        settings,
                        plan.frames_per_request or settings.live_frames_per_request,
                        plan.seconds,
                    )
                )
                out(
                    "Triton alone, live request round trip behind a batch backlog: p95 "
                    f"{alone['live_request_p95_s_priority_on']:.3f} s priority on, "
                    f"{alone['live_request_p95_s_priority_off']:.3f} s off"
                )
                backlog.update(alone)

            onnx_file = _onnx_file(plan.lipsync_model)
            with serve_naive(onnx_file, avatar, mode, work / "naive.log") as naive_base:

                def naive(n: int) -> Round:
                    _step(f"{n} naive session thread(s)")
                    result = asyncio.run(live_round([(naive_base, "naive")], "", pcm, n, region))
                    out(render_row("naive", result))
                    return result

                naive_rounds = search(naive, plan.max_sessions)
                _step("CPU per frame of the naive server, its model included")
                naive_cpu = cpu_per_frame(naive_base, "", "naive", pcm, region, [])
    figures = summary(live_rounds, naive_rounds, model_fps, codec)
    figures["live_cpu_ms_per_frame"] = 1000 * live_cpu.path if live_cpu else None
    # The two architectures' whole cost per frame at the same load: steadier than the
    # largest N, which a single stall of the machine decides near capacity.
    figures["live_total_cpu_ms_per_frame"] = 1000 * live_cpu.whole if live_cpu else None
    figures["naive_total_cpu_ms_per_frame"] = 1000 * naive_cpu.whole if naive_cpu else None
    figures["codec_encoder_fps"] = encoder_fps
    figures["bench_seconds"] = time.perf_counter() - started
    figures["lipsync_model"] = plan.lipsync_model
    figures["replicas"] = plan.replicas
    if plan.frames_per_request is not None:
        figures["frames_per_request"] = plan.frames_per_request
    if backlog is not None:
        figures["backlog"] = backlog
    out(
        f"largest N with < {100 * LATE_LIMIT:g} % late frames: "
        f"live {figures['live_sessions_max']}, "
        f"naive {figures['live_sessions_naive']}; sustained {figures['live_fps']:.1f} fps = "
        f"{figures['live_ratio_limit']:.2f} of the limit {figures['limit_fps']:.1f} fps "
        f"(model {model_fps:.1f}, codec {codec:.1f})"
    )
    if live_cpu and naive_cpu:
        out(
            f"CPU per frame, {CODEC_SESSIONS} sessions, everything on this machine: live "
            f"{1000 * live_cpu.whole:.2f} ms (outside the model {1000 * live_cpu.path:.2f}), "
            f"naive {1000 * naive_cpu.whole:.2f} ms"
        )
    out(json.dumps(figures))
    return 0


async def _alone(settings: Settings, video: Path, plan: Plan) -> tuple[float, float, Avatar, str]:
    """The model alone, the codec alone, the avatar prepared and the model's composite."""
    async with Engine(settings) as engine:
        served = engine.served
        batch = min(settings.lipsync_batch_size, served.lipsync.max_batch_size)
        model_fps = await model_rate.triton_saturated_fps(
            engine.client,
            served.lipsync.name,
            served.face_size,
            batch,
            settings.triton_max_in_flight,
            plan.model_frames,
        )
        avatar = await engine.prepare_avatar(video)
        codec = await asyncio.to_thread(
            codec_fps, avatar, served.face_size, plan.model_frames, os.cpu_count() or 1
        )
    return model_fps, codec, avatar, str(served.composite)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.live", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short speech: a smoke run")
    parser.add_argument("--triton-url", help="measure against this Triton instead of one here")
    parser.add_argument(
        "--lipsync-model",
        default="lipsync",
        help="the lip-sync model (default: the reference model, whose mouth follows "
        f"loudness, so latency is measured; {WAV2LIP_MODEL}: Wav2Lip-96's compute)",
    )
    parser.add_argument("--seconds", type=float, help="speech streamed per session")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="avatar side in pixels")
    parser.add_argument("--max-sessions", type=int, default=DEFAULT_MAX_SESSIONS)
    parser.add_argument(
        "--server-url", help="measure this running service instead of a dh serve started here"
    )
    parser.add_argument("--avatar-id", help="its prepared avatar (default: upload ours)")
    parser.add_argument("--api-key", default="", help="its API key, if it asks for one")
    parser.add_argument(
        "--batch-backlog",
        type=int,
        default=0,
        metavar="J",
        help="then run the largest passing N again while J batch jobs render, with the live "
        "priority (DH_LIVE_PRIORITY) on and off",
    )
    parser.add_argument(
        "--backlog-sessions",
        type=int,
        metavar="N",
        help="sessions of the backlog rounds (default: the largest passing N, at least 1)",
    )
    parser.add_argument(
        "--backlog-repeats", type=int, default=1, metavar="R", help="backlog rounds per setting"
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="R",
        help="spread the live sessions over R dh serve processes on the one Triton "
        "(the naive server stays one process)",
    )
    parser.add_argument(
        "--frames-per-request",
        type=int,
        metavar="K",
        help="the servers' DH_LIVE_FRAMES_PER_REQUEST (default: theirs)",
    )
    args = parser.parse_args(argv)
    plan = Plan(
        seconds=args.seconds or (QUICK_SECONDS if args.quick else DEFAULT_SECONDS),
        size=args.size,
        lipsync_model=args.lipsync_model,
        max_sessions=args.max_sessions,
        model_frames=64 if args.quick else 320,
        server_url=args.server_url,
        avatar_id=args.avatar_id,
        api_key=args.api_key,
        batch_backlog=args.batch_backlog,
        backlog_sessions=args.backlog_sessions,
        backlog_repeats=args.backlog_repeats,
        frames_per_request=args.frames_per_request,
        replicas=args.replicas,
    )
    if args.replicas < 1 or (args.replicas > 1 and args.server_url):
        parser.error("--replicas is 1 or more, and 1 with --server-url")
    return run(plan, args.triton_url, lambda line: print(line, flush=True))


if __name__ == "__main__":
    raise SystemExit(main())
