"""Frames/s per CPU core of each 1080p stage, for the capacity model of GPU hosts.

    python -m benchmarks.costs [--frames 50]

Each stage runs on one thread (OpenCV, PyAV's decoder, libx264 and onnxruntime all held to
one), so a figure is what one core does; a host's CPU side is roughly cores x the slowest
sum. The model's CPU figure says what a GPU saves, not what a GPU host runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import cv2

from benchmarks.codec_rate import fixed_face
from benchmarks.common import wav2lip_onnx
from benchmarks.encoder import FPS, SIZE
from benchmarks.model_rate import lipsync_inputs
from orchestrator.pipeline.composite import composite_frame
from orchestrator.pipeline.encode import Mp4Writer, VideoEncoder
from orchestrator.pipeline.frame_store import FrameStore, FrameWriter
from synthmedia.audio import voiced_speech, write_audio
from synthmedia.avatar import mouth_region, write_avatar_video

# The frame store's default JPEG quality (DH_AVATAR_JPEG_QUALITY).
JPEG_QUALITY = 95
# A model batch as the pipeline sends it (DH_LIPSYNC_BATCH_SIZE).
MODEL_BATCH = 32


def _per_second(count: int, work: Callable[[], object]) -> float:
    started = time.perf_counter()
    for _ in range(count):
        work()
    return count / (time.perf_counter() - started)


def stage_costs(frames: int, work: Path) -> dict[str, float]:
    """Frames/s on one core: decode (H.264 and the frame store's JPEG), composite, encode,
    and the Wav2Lip-96 model (onnxruntime, one thread, batches of MODEL_BATCH)."""
    cv2.setNumThreads(1)
    video, audio = work / "avatar.mp4", work / "speech.wav"
    write_avatar_video(video, seconds=frames / FPS, fps=FPS, size=SIZE)
    write_audio(audio, voiced_speech(frames / FPS), 16000)
    figures: dict[str, float] = {}

    started = time.perf_counter()
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        decoded = [f.to_ndarray(format="bgr24") for f in container.decode(stream)]
    figures["decode_h264_fps"] = len(decoded) / (time.perf_counter() - started)

    store_writer = FrameWriter(work, "jpeg", JPEG_QUALITY)
    for frame in decoded:
        store_writer.append(frame)
    store_writer.close()
    with FrameStore(work, "jpeg", SIZE[0], SIZE[1]) as store:
        index = iter(range(len(decoded)))
        figures["decode_frame_store_fps"] = _per_second(
            len(decoded), lambda: store.read(next(index))
        )

    x, y, w, h = mouth_region(SIZE)
    box = (x - w, y - 2 * h, x + 2 * w, y + 2 * h)  # a face-sized box around the mouth
    face = fixed_face(96)
    figures["composite_fps"] = _per_second(
        len(decoded), lambda: composite_frame(decoded[0], box, face)
    )

    encoder = VideoEncoder(threads=1)
    started = time.perf_counter()
    writer = Mp4Writer(work / "out.mp4", SIZE[0], SIZE[1], Fraction(FPS), audio, encoder)
    for frame in decoded:
        writer.write(frame)
    writer.finish()
    figures["encode_fps"] = len(decoded) / (time.perf_counter() - started)

    import onnxruntime as ort  # a dev dependency: the orchestrator never imports it

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(wav2lip_onnx()), options, providers=["CPUExecutionProvider"])
    inputs = lipsync_inputs(MODEL_BATCH, 96)
    session.run(["pred"], inputs)
    figures["model_cpu_fps"] = MODEL_BATCH * _per_second(2, lambda: session.run(["pred"], inputs))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.costs", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dh-costs-") as scratch:
        figures = stage_costs(args.frames, Path(scratch))
    for name, fps in figures.items():
        print(f"{name:24s} {fps:8.1f} frames/s per core  ({1000 / fps:6.1f} ms per frame)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
