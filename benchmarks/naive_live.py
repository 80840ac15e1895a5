"""The architecture live sessions replace, as a server that benchmarks.live's client talks
to exactly as it talks to `dh serve`:

    python -m benchmarks.naive_live PORT ONNX_FILE AVATAR_DIR COMPOSITE_MODE

Each session is a thread that, frame by frame once the frame's audio window has arrived,
calls onnxruntime in this process at batch 1, composites and hands the frame to its WebRTC
video track: what the open live tools do, one Python thread (and its model calls) per
session. Everything else is the live path's: the same routes (the subset the client
uses), PCM up a WebSocket, aiortc's WebRTC down, the same mel window per frame
(orchestrator.live.frames), the same avatar frames and composite. So the two servers
differ only in how frames are inferred: batched across sessions by Triton, or one call
per frame per session.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import onnxruntime as ort
import uvicorn
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack
from fastapi import FastAPI, HTTPException, Response, WebSocket, WebSocketDisconnect

from orchestrator.live import frames as live
from orchestrator.live.speech import SILENCE_PEAK
from orchestrator.live.tracks import video_frame
from orchestrator.pipeline.avatar_cache import Avatar, load_avatar
from orchestrator.pipeline.composite import CompositeMode, composite_frame
from orchestrator.pipeline.infer import face_crop, face_stack, pred_to_crops
from orchestrator.pipeline.mel import SAMPLE_RATE

FPS = Fraction(25)
# Audio a session may hold: the benchmark streams seconds, not minutes.
MAX_AUDIO_S = 120
# A frame is drawn once its mel window's audio has arrived, and this much more (a 20 ms
# WebSocket message may still be on its way).
ARRIVAL_SLACK_S = 0.02


class NaiveSession:
    """One session: its audio as it arrives (position p plays at start + p / 16 kHz), and
    the thread that draws its frames."""

    def __init__(
        self, avatar: Avatar, model: ort.InferenceSession, mode: CompositeMode, face_size: int
    ) -> None:
        self.id = uuid.uuid4().hex
        self.start = time.perf_counter()
        self._avatar, self._model, self._mode, self._size = avatar, model, mode, face_size
        self._audio = np.zeros(MAX_AUDIO_S * SAMPLE_RATE, np.float32)
        self._end = 0
        self._speech: list[tuple[int, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._frames: asyncio.Queue[tuple[int, np.ndarray]] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        # A daemon: a server stopped with sessions open exits all the same.
        self._thread = threading.Thread(target=self._draw, name=f"naive-{self.id[:8]}", daemon=True)
        self._thread.start()

    def hear(self, samples: np.ndarray) -> None:
        with self._lock:
            now = int((time.perf_counter() - self.start) * SAMPLE_RATE)
            at = max(self._end, now)
            end = min(at + samples.size, self._audio.size)
            self._audio[at:end] = samples[: end - at]
            self._end = end
            if samples.size and float(np.abs(samples).max()) >= SILENCE_PEAK:
                self._speech.append((at, end))

    async def next_frame(self) -> tuple[int, np.ndarray]:
        return await self._frames.get()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _segment(self, start: int, end: int) -> np.ndarray | None:
        """The frame's window of audio, or None when nobody speaks in it."""
        with self._lock:
            if not any(s < end and start < e for s, e in self._speech):
                return None
            segment = np.zeros(end - start, np.float32)
            first, last = max(start, 0), min(end, self._end)
            if last > first:
                segment[first - start : last - start] = self._audio[first:last]
            return segment

    def _draw(self) -> None:
        with self._avatar.open_frames() as store:
            index = 0
            while not self._stop.is_set():
                start, end = live.window_span(index, FPS)
                ready = self.start + end / SAMPLE_RATE + ARRIVAL_SLACK_S
                if self._stop.wait(max(0.0, ready - time.perf_counter())):
                    return
                source = live.avatar_index(index, self._avatar.frame_count)
                frame = store.read(source)
                box = live.face_box(self._avatar.boxes, source)
                segment = self._segment(start, end) if box is not None else None
                if box is not None and segment is not None:
                    feed = {
                        "mel": live.frame_mel_window(segment)[None, None].astype(np.float32),
                        "face": face_stack(frame, box, self._size)[None],
                    }
                    (pred,) = self._model.run(["pred"], feed)
                    given = face_crop(frame, box, self._size)
                    frame = composite_frame(frame, box, pred_to_crops(pred)[0], given, self._mode)
                self._loop.call_soon_threadsafe(self._frames.put_nowait, (index, frame))
                index += 1


class NaiveVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, session: NaiveSession) -> None:
        super().__init__()
        self._session = session

    async def recv(self) -> av.VideoFrame:
        index, image = await self._session.next_frame()
        return video_frame(image, index, FPS)


def create_app(onnx_file: Path, avatar_dir: Path, mode: CompositeMode) -> FastAPI:
    avatar = load_avatar(avatar_dir)
    if avatar is None:
        raise SystemExit(f"no prepared avatar in {avatar_dir}")
    model = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    face_size = next(int(t.shape[-1]) for t in model.get_inputs() if t.name == "face")
    sessions: dict[str, tuple[NaiveSession, list[RTCPeerConnection]]] = {}
    app = FastAPI()

    def find(session_id: str) -> tuple[NaiveSession, list[RTCPeerConnection]]:
        if session_id not in sessions:
            raise HTTPException(404, "no such session")
        return sessions[session_id]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/sessions", status_code=201)
    async def create(body: dict[str, str]) -> dict[str, Any]:
        session = NaiveSession(avatar, model, mode, face_size)
        sessions[session.id] = (session, [])
        return {"id": session.id}

    @app.delete("/v1/sessions/{session_id}", status_code=204)
    async def delete(session_id: str) -> Response:
        session, peers = find(session_id)
        del sessions[session_id]
        for pc in peers:
            await pc.close()
        await asyncio.to_thread(session.close)
        return Response(status_code=204)

    @app.post("/v1/sessions/{session_id}/webrtc")
    async def webrtc(session_id: str, offer: dict[str, str]) -> dict[str, str]:
        session, peers = find(session_id)
        pc = RTCPeerConnection()
        peers.append(pc)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type=offer["type"]))
        pc.addTrack(NaiveVideoTrack(session))
        pc.addTrack(AudioStreamTrack())
        await pc.setLocalDescription(await pc.createAnswer())
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

    @app.websocket("/v1/sessions/{session_id}/audio")
    async def audio(socket: WebSocket, session_id: str) -> None:
        if session_id not in sessions:
            await socket.close(code=4404)
            return
        session, _ = sessions[session_id]
        await socket.accept()
        with contextlib.suppress(WebSocketDisconnect, MediaStreamError):
            while True:
                message = await socket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if data := message.get("bytes"):
                    session.hear(np.frombuffer(data, "<i2").astype(np.float32) / 32768.0)

    return app


def main() -> None:
    port, onnx_file, avatar_dir, mode = sys.argv[1:5]
    app = create_app(Path(onnx_file), Path(avatar_dir), CompositeMode(mode))
    config = uvicorn.Config(app, host="127.0.0.1", port=int(port), log_level="warning")
    asyncio.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
