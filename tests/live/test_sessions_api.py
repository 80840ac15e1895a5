"""Live sessions through a real server: REST, WebRTC on 127.0.0.1, speech over a WebSocket
and as a file, barge-in, capacity, bad input."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamTrack
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from synthmedia.audio import voiced_speech, write_audio
from synthmedia.avatar import write_avatar_video
from tests.api.conftest import AVATAR_FPS, ServerFactory, register_avatar
from tests.api.server import ApiServer
from tests.live.client import Microphone, webrtc_peer

API_KEY = "live-key"
# The shared test machine is loaded: a frame gets this less 0.21 s to render.
LATENCY_S = 1.0
MAX_QUEUED_S = 4.0
RTP_VIDEO_CLOCK = 90000
PCM_CHUNK = 320  # 20 ms at 16 kHz


@pytest.fixture(scope="module")
def live(server_factory: ServerFactory) -> ApiServer:
    return server_factory(
        api_key=API_KEY,
        ice_host_addresses=["127.0.0.1"],
        max_sessions=2,
        live_latency_s=LATENCY_S,
        live_max_queued_s=MAX_QUEUED_S,
    )


@pytest.fixture(scope="module")
def live_avatar(live: ApiServer, avatar_video: Path) -> str:
    return register_avatar(live, avatar_video)


@pytest.fixture
async def http(live: ApiServer) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=live.base_url, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture
async def session_id(http: httpx.AsyncClient, live_avatar: str) -> AsyncIterator[str]:
    reply = await http.post("/v1/sessions", json={"avatar_id": live_avatar})
    assert reply.status_code == 201, reply.text
    yield reply.json()["id"]
    await http.delete(f"/v1/sessions/{reply.json()['id']}")


def _socket_url(live: ApiServer, session_id: str) -> str:
    return f"ws://127.0.0.1:{live.port}/v1/sessions/{session_id}/audio"


def _pcm(samples: np.ndarray) -> bytes:
    pcm: bytes = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    return pcm


async def _video_frame(track: MediaStreamTrack) -> av.VideoFrame:
    # aiortc types recv() as any Frame or Packet; a received video track yields decoded frames.
    frame = await track.recv()
    assert isinstance(frame, av.VideoFrame), type(frame)
    return frame


async def _audio_frame(track: MediaStreamTrack) -> av.AudioFrame:
    frame = await track.recv()
    assert isinstance(frame, av.AudioFrame), type(frame)
    return frame


def _mouth(avatar_cache: Path) -> tuple[slice, slice]:
    """The mouth region of the avatar (its mean face box's lower middle)."""
    x1, y1, x2, y2 = np.load(avatar_cache / "boxes.npy").mean(axis=0)
    w, h = x2 - x1, y2 - y1
    return slice(int(y1 + 0.6 * h), int(y1 + 0.85 * h)), slice(int(x1 + 0.3 * w), int(x2 - 0.3 * w))


async def test_a_session_opens_on_a_prepared_avatar_and_is_listed(
    http: httpx.AsyncClient, session_id: str, live_avatar: str
) -> None:
    reply = await http.get(f"/v1/sessions/{session_id}")

    assert reply.status_code == 200
    document = reply.json()
    assert document["avatar_id"] == live_avatar
    assert document["state"] == "waiting"
    assert document["fps"] == AVATAR_FPS
    assert document["links"]["webrtc"] == f"/v1/sessions/{session_id}/webrtc"
    assert document["links"]["audio"] == f"/v1/sessions/{session_id}/audio"
    listed = (await http.get("/v1/sessions")).json()["items"]
    assert session_id in [item["id"] for item in listed]
    unknown = await http.post("/v1/sessions", json={"avatar_id": "0" * 32})
    assert unknown.status_code == 404


async def test_an_avatar_still_being_prepared_is_refused_with_409(
    http: httpx.AsyncClient, tmp_path: Path
) -> None:
    fresh = tmp_path / "fresh.mp4"
    write_avatar_video(fresh, seconds=2.0, fps=AVATAR_FPS, size=(160, 160))
    uploaded = await http.post("/v1/avatars", files={"video": ("fresh.mp4", fresh.read_bytes())})
    assert uploaded.status_code == 201, uploaded.text
    avatar_id = uploaded.json()["id"]

    reply = await http.post("/v1/sessions", json={"avatar_id": avatar_id})
    after = (await http.get(f"/v1/avatars/{avatar_id}")).json()["state"]

    # Still preparing once the answer came: it was preparing when asked, so 409.
    if after == "preparing":
        assert reply.status_code == 409, reply.text
        assert "not prepared" in reply.json()["error"]["message"]
    elif reply.status_code == 201:
        await http.delete(f"/v1/sessions/{reply.json()['id']}")
    await http.delete(f"/v1/avatars/{avatar_id}")


async def test_video_comes_at_the_avatars_rate_with_an_audio_track_and_speech_moves_the_mouth(
    live: ApiServer, http: httpx.AsyncClient, session_id: str, avatar_cache: Path
) -> None:
    mouth = _mouth(avatar_cache)
    async with webrtc_peer(http, session_id) as peer:
        silent = [await _video_frame(peer.video) for _ in range(25)]
        audio = await _audio_frame(peer.audio)
        state = (await http.get(f"/v1/sessions/{session_id}")).json()
        async with connect(
            _socket_url(live, session_id), additional_headers={"Authorization": f"Bearer {API_KEY}"}
        ) as socket:
            speech = voiced_speech(1.0) * 1.5
            for first in range(0, speech.size, PCM_CHUNK):
                await socket.send(_pcm(speech[first : first + PCM_CHUNK]))
            spoken = [
                await _video_frame(peer.video) for _ in range(int((LATENCY_S + 1.5) * AVATAR_FPS))
            ]

    steps = np.diff([frame.pts for frame in silent])
    # Frames carry the session clock at the avatar's rate (a loaded server may skip one).
    assert np.median(steps) == RTP_VIDEO_CLOCK / AVATAR_FPS
    assert all(step % (RTP_VIDEO_CLOCK // AVATAR_FPS) == 0 for step in steps)
    assert audio.sample_rate > 0 and audio.samples > 0
    assert state["state"] == "streaming" and state["frames_sent"] >= 25
    idle = [float(f.to_ndarray(format="bgr24")[mouth].mean()) for f in silent]
    talking = [float(f.to_ndarray(format="bgr24")[mouth].mean()) for f in spoken]
    # In silence the mouth stays still (head sway and the codec move it a little); loud
    # speech darkens it (the reference model).
    assert max(idle) - min(idle) < 6, idle
    assert min(talking) < min(idle) - 6, (idle, talking)


async def test_the_peers_microphone_is_heard_as_speech(
    http: httpx.AsyncClient, session_id: str, avatar_cache: Path
) -> None:
    mouth = _mouth(avatar_cache)
    # 0.6 s of quiet, then a second of loud speech, at the browser's 48 kHz.
    speech = np.concatenate([np.zeros(28800), np.repeat(voiced_speech(1.0) * 1.5, 3)])
    async with webrtc_peer(http, session_id, Microphone(speech)) as peer:
        frames = [
            await _video_frame(peer.video) for _ in range(int((LATENCY_S + 2.5) * AVATAR_FPS))
        ]

    darkness = [float(f.to_ndarray(format="bgr24")[mouth].mean()) for f in frames]
    assert min(darkness) < max(darkness[:10]) - 6, darkness


async def test_interrupt_drops_queued_speech(
    live: ApiServer, http: httpx.AsyncClient, session_id: str, tmp_path: Path
) -> None:
    speech = tmp_path / "speech.wav"
    write_audio(speech, voiced_speech(3.0), 16000)
    with speech.open("rb") as f:
        queued = await http.post(f"/v1/sessions/{session_id}/speech", files={"audio": f})
    assert queued.status_code == 202, queued.text
    assert queued.json()["speech_queued_s"] > 2.5

    reply = await http.post(f"/v1/sessions/{session_id}/interrupt")

    assert reply.status_code == 200
    # Nothing is queued past "now" any more (the in-process tests check the frames).
    assert reply.json()["speech_queued_s"] == 0, reply.json()["speech_queued_s"]


async def test_a_client_sending_faster_than_real_time_is_held_to_the_queue_bound(
    live: ApiServer, http: httpx.AsyncClient, session_id: str
) -> None:
    speech = _pcm(voiced_speech(MAX_QUEUED_S + 2))
    async with connect(
        _socket_url(live, session_id), additional_headers={"Authorization": f"Bearer {API_KEY}"}
    ) as socket:
        for first in range(0, len(speech), 2 * PCM_CHUNK):
            await socket.send(speech[first : first + 2 * PCM_CHUNK])
        # The server reads until the queue is full, then stops reading (back-pressure).
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            queued = (await http.get(f"/v1/sessions/{session_id}")).json()["speech_queued_s"]
            if queued >= MAX_QUEUED_S - 0.5 or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)  # polling the REST answer: no event crosses HTTP
        assert MAX_QUEUED_S - 0.5 <= queued <= MAX_QUEUED_S + 0.05, queued
        await socket.ping()  # still open: held back, not refused


async def test_speech_beyond_the_queue_bound_is_refused(
    http: httpx.AsyncClient, session_id: str, tmp_path: Path
) -> None:
    speech = tmp_path / "long.wav"
    write_audio(speech, voiced_speech(MAX_QUEUED_S + 2), 16000)
    with speech.open("rb") as f:
        reply = await http.post(f"/v1/sessions/{session_id}/speech", files={"audio": f})

    assert reply.status_code == 429, reply.text
    assert "Retry-After" in reply.headers


async def test_capacity_is_bounded_and_delete_frees_a_place(
    live: ApiServer, http: httpx.AsyncClient, live_avatar: str
) -> None:
    opened = []
    for _ in range(2):
        reply = await http.post("/v1/sessions", json={"avatar_id": live_avatar})
        assert reply.status_code == 201, reply.text
        opened.append(reply.json()["id"])
    full = await http.post("/v1/sessions", json={"avatar_id": live_avatar})
    assert full.status_code == 429
    assert int(full.headers["Retry-After"]) > 0
    # Each session read its first picture on opening: the avatar's, decoded once, shared.
    assert _gauge((await http.get("/metrics")).text, "dh_live_frame_cache_bytes") > 0

    async with connect(
        _socket_url(live, opened[0]), additional_headers={"Authorization": f"Bearer {API_KEY}"}
    ) as socket:
        assert (await http.delete(f"/v1/sessions/{opened[0]}")).status_code == 204
        with pytest.raises(ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    assert (await http.get(f"/v1/sessions/{opened[0]}")).status_code == 404
    assert (await http.delete(f"/v1/sessions/{opened[0]}")).status_code == 404
    again = await http.post("/v1/sessions", json={"avatar_id": live_avatar})
    assert again.status_code == 201
    for session in (opened[1], again.json()["id"]):
        assert (await http.delete(f"/v1/sessions/{session}")).status_code == 204
    metrics = (await http.get("/metrics")).text
    assert "dh_live_sessions 0.0" in metrics
    assert _gauge(metrics, "dh_live_frame_cache_bytes") == 0  # freed with the last session


def _gauge(metrics: str, name: str) -> float:
    (line,) = [line for line in metrics.splitlines() if line.startswith(f"{name} ")]
    return float(line.split()[1])


async def test_bad_input_is_refused_with_a_reason(
    live: ApiServer, http: httpx.AsyncClient, session_id: str
) -> None:
    garbage = await http.post(
        f"/v1/sessions/{session_id}/webrtc", json={"sdp": "v=0\nnonsense", "type": "offer"}
    )
    assert garbage.status_code == 422, garbage.text
    assert garbage.json()["error"]["message"]
    unknown = await http.post("/v1/sessions/nope/webrtc", json={"sdp": "v=0", "type": "offer"})
    assert unknown.status_code == 404
    assert (await http.post("/v1/sessions/nope/interrupt")).status_code == 404
    keyless = httpx.AsyncClient(base_url=live.base_url)
    async with keyless:
        assert (await keyless.get(f"/v1/sessions/{session_id}")).status_code == 401

    url = _socket_url(live, session_id)
    for target, headers, message, code in (
        (url, {"Authorization": f"Bearer {API_KEY}"}, b"\x00\x01\x02", 1007),
        (url, {"Authorization": f"Bearer {API_KEY}"}, '{"sample_rate": 3}', 1007),
        (url, {}, b"\x00\x00", 4401),
        (f"{url}?api_key=wrong", {}, b"\x00\x00", 4401),
        (_socket_url(live, "nope"), {"Authorization": f"Bearer {API_KEY}"}, b"\x00\x00", 4404),
    ):
        async with connect(target, additional_headers=headers) as socket:
            with contextlib.suppress(ConnectionClosed):  # refused before it was sent
                await socket.send(message)
            with pytest.raises(ConnectionClosed) as closed:
                await socket.recv()
        assert closed.value.rcvd is not None, (target, message)
        assert closed.value.rcvd.code == code, (message, closed.value.rcvd)
        assert closed.value.rcvd.reason
    # The session is still there and well after all that.
    assert (await http.get(f"/v1/sessions/{session_id}")).json()["state"] == "waiting"
