"""A stand-in for the live-session server, built from the contract alone, so the page and
the benchmark's client are tested before (and apart from) the real one:

    python -m tests.live.stub_server PORT

Routes as the contract names them: /v1/avatars (one ready avatar), /v1/sessions (create,
list, get, delete), /v1/sessions/{id}/audio (WebSocket, 16-bit LE PCM mono 16 kHz; the
peer's audio track is heard the same way), /speech, /interrupt, /webrtc (offer in,
answer out: one video track at 25 fps, one audio track). Its "model" darkens a square
over the mouth by the loudness last heard, so a test sees the mouth follow the voice; and
it serves /live from the real routes module.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame
from fastapi import FastAPI, HTTPException, Request, Response, WebSocket, WebSocketDisconnect

from orchestrator.api.routes import live_page
from synthmedia.avatar import mouth_region
from tests.api.server import _die_with_parent, free_port, poll_until

SIZE = (160, 160)
FPS = 25
AVATAR_ID = "stub-avatar"
# Full-scale speech RMS is ~0.2: this gain takes it to a clearly dark mouth.
DARKENING_GAIN = 4.0
GREY = 180
CLOCK = 90000  # WebRTC video timestamps


class Session:
    def __init__(self, avatar_id: str) -> None:
        self.id = uuid.uuid4().hex
        self.avatar_id = avatar_id
        self.level = 0.0
        self.chunks = 0
        self.pc: RTCPeerConnection | None = None

    def heard(self, samples: np.ndarray) -> None:
        self.level = float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0
        self.chunks += 1

    def document(self) -> dict[str, Any]:
        base = f"/v1/sessions/{self.id}"
        return {
            "id": self.id,
            "avatar_id": self.avatar_id,
            "state": "connected" if self.pc else "created",
            "audio_chunks": self.chunks,
            "links": {
                "self": base,
                "audio": f"{base}/audio",
                "webrtc": f"{base}/webrtc",
                "speech": f"{base}/speech",
                "interrupt": f"{base}/interrupt",
            },
        }


class MouthTrack(VideoStreamTrack):
    """A grey face whose mouth square darkens with the loudness the session last heard."""

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self.region = mouth_region(SIZE)
        self.started: float | None = None
        self.index = 0

    async def recv(self) -> VideoFrame:
        # aiortc's own clock runs at 30 fps; the contract says the avatar's fps.
        if self.started is None:
            self.started = time.monotonic()
        due = self.started + self.index / FPS
        self.index += 1
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        pts, time_base = round((due - self.started) * CLOCK), Fraction(1, CLOCK)
        image = np.full((SIZE[1], SIZE[0], 3), GREY, np.uint8)
        x, y, w, h = self.region
        shade = min(1.0, DARKENING_GAIN * self.session.level)
        image[y : y + h, x : x + w] = int(GREY * (1 - 0.8 * shade))
        frame = VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts, frame.time_base = pts, time_base
        return frame


def create_app() -> FastAPI:
    app = FastAPI()
    sessions: dict[str, Session] = {}
    app.include_router(live_page.router)

    def find(session_id: str) -> Session:
        if session_id not in sessions:
            raise HTTPException(404, "no such session")
        return sessions[session_id]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/avatars")
    async def avatars() -> dict[str, Any]:
        item = {"id": AVATAR_ID, "state": "ready", "name": "stub.mp4", "fps": FPS}
        return {"items": [{**item, "width": SIZE[0], "height": SIZE[1]}]}

    @app.post("/v1/sessions", status_code=201)
    async def create(body: dict[str, str]) -> dict[str, Any]:
        if body.get("avatar_id") != AVATAR_ID:
            raise HTTPException(404, "no such avatar")
        session = Session(body["avatar_id"])
        sessions[session.id] = session
        return session.document()

    @app.get("/v1/sessions")
    async def listing() -> dict[str, Any]:
        return {"items": [s.document() for s in sessions.values()]}

    @app.get("/v1/sessions/{session_id}")
    async def get(session_id: str) -> dict[str, Any]:
        return find(session_id).document()

    @app.delete("/v1/sessions/{session_id}", status_code=204)
    async def delete(session_id: str) -> Response:
        session = sessions.pop(session_id, None)
        if session is None:
            raise HTTPException(404, "no such session")
        if session.pc:
            await session.pc.close()
        return Response(status_code=204)

    @app.post("/v1/sessions/{session_id}/interrupt")
    async def interrupt(session_id: str) -> dict[str, Any]:
        session = find(session_id)
        session.level = 0.0
        return session.document()

    @app.post("/v1/sessions/{session_id}/speech", status_code=202)
    async def speech(session_id: str, request: Request) -> dict[str, Any]:
        await request.body()
        return find(session_id).document()

    @app.post("/v1/sessions/{session_id}/webrtc")
    async def webrtc(session_id: str, offer: dict[str, str]) -> dict[str, str]:
        session = find(session_id)
        pc = RTCPeerConnection()
        session.pc = pc
        pc.on("track", lambda track: _hear(session, track))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type=offer["type"]))
        pc.addTrack(MouthTrack(session))
        pc.addTrack(AudioStreamTrack())
        await pc.setLocalDescription(await pc.createAnswer())
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

    @app.websocket("/v1/sessions/{session_id}/audio")
    async def audio(socket: WebSocket, session_id: str) -> None:
        session = sessions.get(session_id)
        if session is None:
            await socket.close(code=4404)
            return
        await socket.accept()
        try:
            while True:
                message = await socket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes")
                if data:
                    session.heard(np.frombuffer(data, "<i2").astype(np.float32) / 32768.0)
        except WebSocketDisconnect:
            return

    return app


_listeners: set[asyncio.Task[None]] = set()


def _hear(session: Session, track: MediaStreamTrack) -> None:
    """The browser's microphone, as the peer's audio track."""
    if track.kind != "audio":
        return

    async def listen() -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, AudioFrame)
            samples = frame.to_ndarray().astype(np.float32).reshape(-1) / 32768.0
            session.heard(samples)

    task = asyncio.create_task(listen())
    _listeners.add(task)
    task.add_done_callback(_listeners.discard)


@contextlib.contextmanager
def running_stub(start_s: float = 30.0) -> Iterator[str]:
    """This stub in a child process on a free port (dies with the test process); yields its
    base URL; stopped by its own PID."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.live.stub_server", str(port)],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        poll_until(lambda: _answers(f"{base}/healthz"), bool, start_s, "the stub server is up")
        yield base
    finally:
        process.terminate()
        process.wait(10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.TransportError:
        return False


def main() -> None:
    port = int(sys.argv[1])
    config = uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning")
    asyncio.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
