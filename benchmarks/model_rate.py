"""Model only: frames/s of the lip-sync generator, through Triton and in this process.

Both feed the same inputs: random faces and mel windows of the lipsync contract's shapes,
so the figures are the model's compute and transport, with no decoding or blending.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

from orchestrator.triton import TritonClient

# The lipsync contract (orchestrator/contracts.py): one mel window is [1, 80, 16], a face
# stack is [6, S, S].
MEL_SHAPE = (1, 80, 16)
FACE_CHANNELS = 6
# Batches measured after one warm-up request, at least: two keeps every instance busy.
MIN_BATCHES = 2


def lipsync_inputs(batch: int, face_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "mel": rng.uniform(-4, 4, (batch, *MEL_SHAPE)).astype(np.float32),
        "face": rng.uniform(0, 1, (batch, FACE_CHANNELS, face_size, face_size)).astype(np.float32),
    }


async def triton_saturated_fps(
    client: TritonClient,
    model: str,
    face_size: int,
    batch_size: int,
    in_flight: int,
    frames: int,
) -> float:
    """Frames/s of `model` on Triton with `in_flight` requests of `batch_size` outstanding
    at all times, `frames` frames in all (at least MIN_BATCHES batches)."""
    inputs = lipsync_inputs(batch_size, face_size)
    await client.infer(model, inputs, ["pred"])  # warm-up: first calls allocate
    batches = max(MIN_BATCHES, -(-frames // batch_size))
    slots = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with slots:
            await client.infer(model, inputs, ["pred"])

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(batches):
            group.create_task(one())
    return batches * batch_size / (time.perf_counter() - started)


def ort_batch1_fps(onnx_file: Path, frames: int, threads: int = 0) -> float:
    """Frames/s of the ONNX model in this process, one frame per call, as the service this
    replaces ran it. `threads` 0: onnxruntime's default (every core)."""
    import onnxruntime as ort  # a dev dependency: the orchestrator never imports it

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    face_size = next(int(t.shape[-1]) for t in session.get_inputs() if t.name == "face")
    inputs = lipsync_inputs(1, face_size)
    session.run(["pred"], inputs)  # warm-up
    started = time.perf_counter()
    for _ in range(frames):
        session.run(["pred"], inputs)
    return frames / (time.perf_counter() - started)
