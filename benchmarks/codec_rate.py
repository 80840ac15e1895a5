"""Codec only, and the naive architecture: frames/s of decode, composite and encode.

*Codec only* is the pipeline's own CPU work without the model: an avatar frame read from
the prepared avatar's frame store (as the drive stage reads it), a fixed generated face
blended in (composite), the frame encoded (encode), with the job's thread pool overlapping
frames as the pipeline does. *Naive* is the architecture this service replaces: one loop
that decodes the avatar video, runs onnxruntime in-process on one frame, composites and
encodes it, then moves on; no Triton, no batching, no overlap.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np

from orchestrator.pipeline.avatar_cache import Avatar
from orchestrator.pipeline.composite import composite_frame
from orchestrator.pipeline.decode import decode_audio, read_video_frames
from orchestrator.pipeline.drive import output_fps, pingpong
from orchestrator.pipeline.encode import Mp4Writer, VideoEncoder
from orchestrator.pipeline.infer import PIXEL_MAX, face_stack
from orchestrator.pipeline.mel import mel_spectrogram, mel_window

# Frames composed ahead of the encoder: the pipeline's queues hold as many and more.
FRAMES_AHEAD = 8


def fixed_face(face_size: int, seed: int = 0) -> np.ndarray:
    """A generated face that differs from every crop, so composite always blends."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (face_size, face_size, 3), dtype=np.uint8)


def _box(avatar: Avatar, index: int) -> tuple[int, int, int, int] | None:
    row = avatar.boxes[index]
    return None if row[0] < 0 else (int(row[0]), int(row[1]), int(row[2]), int(row[3]))


def codec_fps(
    avatar: Avatar,
    audio: Path,
    out: Path,
    frames: int,
    face_size: int,
    encoder: VideoEncoder,
    threads: int,
) -> float:
    """Frames/s of frame store → composite → encode for `frames` output frames."""
    face = fixed_face(face_size)
    fps = output_fps(avatar.fps, None)
    started = time.perf_counter()
    writer = Mp4Writer(out, avatar.width, avatar.height, fps, audio, encoder)
    try:
        with avatar.open_frames() as store, ThreadPoolExecutor(threads) as pool:

            def composed(index: int) -> np.ndarray:
                avatar_index = pingpong(index, avatar.frame_count)
                frame = store.read(avatar_index)
                box = _box(avatar, avatar_index)
                return frame if box is None else composite_frame(frame, box, face)

            ahead: deque[Future[np.ndarray]] = deque()
            for index in range(frames):
                ahead.append(pool.submit(composed, index))
                if len(ahead) >= FRAMES_AHEAD:
                    writer.write(ahead.popleft().result())
            while ahead:
                writer.write(ahead.popleft().result())
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    return frames / (time.perf_counter() - started)


def _looped_frames(video: Path, fps: float) -> Iterator[np.ndarray]:
    """The video's frames, from the start again when they run out (as many as asked)."""
    while True:
        yield from read_video_frames(video, fps)


def naive_fps(
    video: Path,
    avatar: Avatar,
    audio: Path,
    out: Path,
    frames: int,
    onnx_file: Path,
    encoder: VideoEncoder,
) -> float:
    """Frames/s of the sequential loop, audio decoding and the mel included (a job does
    those too); the face boxes are the prepared avatar's (detection is not compared)."""
    import onnxruntime as ort  # a dev dependency: the orchestrator never imports it

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    face_size = next(int(t.shape[-1]) for t in session.get_inputs() if t.name == "face")
    started = time.perf_counter()
    mel = mel_spectrogram(decode_audio(audio))
    fps: Fraction = output_fps(avatar.fps, None)
    writer = Mp4Writer(out, avatar.width, avatar.height, fps, audio, encoder)
    try:
        decoded = _looped_frames(video, avatar.fps)
        for index in range(frames):
            frame = next(decoded)
            box = _box(avatar, index % avatar.frame_count)
            if box is not None:
                feed = {
                    "mel": mel_window(mel, index, float(fps))[None, None].astype(np.float32),
                    "face": face_stack(frame, box, face_size)[None],
                }
                (pred,) = session.run(["pred"], feed)
                face = np.clip(pred[0] * PIXEL_MAX + 0.5, 0, PIXEL_MAX).astype(np.uint8)
                frame = composite_frame(frame, box, face.transpose(1, 2, 0))
            writer.write(frame)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    return frames / (time.perf_counter() - started)
