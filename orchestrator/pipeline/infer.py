"""infer: face crops and mel windows, batched, to the lipsync model on Triton.

When a job asks for face restoration, each batch's generated faces go on to the
face_restore model (resized up to its size S) in the same task, and composite pastes the
restored faces from that size straight into their boxes: resizing them back down to the
lipsync crop (96 px) first would throw away what the restorer drew.

Batches go out as tasks with a bounded number in flight; the tasks themselves are queued
in frame order, so the next stage gets results in order however Triton schedules them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass

import cv2
import numpy as np

from orchestrator.pipeline.stages import END, DrivenFrame, GeneratedFrame, StageClock, guarded
from orchestrator.triton import TritonClient

STAGE = "infer"
PIXEL_MAX = 255.0
# Frames in a job's first request. The first output frame waits for its whole batch (and
# for the avatar frames it needs to be prepared), so a job starts small and doubles up to
# the configured size: the first frame comes sooner, throughput stays the same.
FIRST_BATCH = 4

BatchTask = asyncio.Task[list[GeneratedFrame]]


@dataclass(frozen=True)
class FaceRestorer:
    """The face_restore model as a job uses it (contracts.FACE_RESTORE)."""

    model: str
    size: int  # its face size S, from its config (512 for GFPGAN)
    batch_size: int  # faces per request: its max_batch_size


def face_crop(frame: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """The box of `frame` as the model sees it: BGR uint8 [S, S, 3]."""
    x1, y1, x2, y2 = box
    return cv2.resize(frame[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_AREA)


def face_stack(frame: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """The lipsync `face` input for one frame: [6, S, S] in [0, 1], BGR like Wav2Lip."""
    return _stack(face_crop(frame, box, size))


def _stack(crop: np.ndarray) -> np.ndarray:
    """Channels 0-2 are the target crop with its lower half zeroed (the model must draw
    the mouth), channels 3-5 the unmasked crop as the reference."""
    size = crop.shape[0]
    chw = crop.transpose(2, 0, 1).astype(np.float32) / PIXEL_MAX
    masked = chw.copy()
    masked[:, size // 2 :] = 0.0
    return np.concatenate([masked, chw])


def _batch_inputs(
    batch: list[DrivenFrame], size: int
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """mel and face inputs of the frames with a face, and their crops (for composite)."""
    crops = [face_crop(item.frame, item.box, size) for item in batch if item.box is not None]
    faces = np.stack([_stack(crop) for crop in crops])
    mels = np.stack([item.mel_window[None] for item in batch if item.box is not None])
    return mels.astype(np.float32), faces, crops


def batch_sizes(batch_size: int) -> Iterator[int]:
    """FIRST_BATCH, doubling each time, then `batch_size` for ever."""
    size = min(FIRST_BATCH, batch_size)
    while True:
        yield size
        size = min(size * 2, batch_size)


def pred_to_crops(pred: np.ndarray) -> np.ndarray:
    """[B, 3, S, S] in [0, 1] to B BGR uint8 crops."""
    return np.clip(pred * PIXEL_MAX + 0.5, 0, PIXEL_MAX).astype(np.uint8).transpose(0, 2, 3, 1)


def restore_input(pred: np.ndarray, size: int) -> np.ndarray:
    """Lipsync predictions [B, 3, S, S] as the restorer's `face` input [B, 3, R, R]: the
    same BGR channels in [0, 1], resized to its size R."""
    if pred.shape[-1] == size:
        clipped: np.ndarray = np.clip(pred, 0.0, 1.0).astype(np.float32)
        return clipped
    faces = np.empty((len(pred), 3, size, size), np.float32)
    for face, out in zip(pred, faces, strict=True):
        hwc = np.ascontiguousarray(face.transpose(1, 2, 0), dtype=np.float32)
        resized = cv2.resize(hwc, (size, size), interpolation=cv2.INTER_CUBIC)
        out[...] = resized.transpose(2, 0, 1)
    # Bicubic overshoots at edges; the contract is [0, 1].
    np.clip(faces, 0.0, 1.0, out=faces)
    return faces


async def _restore(
    pred: np.ndarray,
    client: TritonClient,
    restorer: FaceRestorer,
    pool: Executor,
    clock: StageClock,
) -> np.ndarray:
    """The batch's faces through face_restore: [B, 3, R, R] in [0, 1]. A batch larger than
    the restorer's goes as consecutive requests; other batches are in flight meanwhile."""
    faces = await clock.run(STAGE, pool, restore_input, pred, restorer.size)
    restored = []
    started = asyncio.get_running_loop().time()
    for first in range(0, len(faces), restorer.batch_size):
        chunk = faces[first : first + restorer.batch_size]
        result = await client.infer(restorer.model, {"face": chunk}, ["restored"])
        restored.append(result["restored"])
    clock.add(STAGE, asyncio.get_running_loop().time() - started)
    return np.concatenate(restored)


async def _infer_batch(
    batch: list[DrivenFrame],
    client: TritonClient,
    model: str,
    face_size: int,
    pool: Executor,
    clock: StageClock,
    restorer: FaceRestorer | None = None,
) -> list[GeneratedFrame]:
    if not any(item.box is not None for item in batch):
        return [GeneratedFrame(item, None) for item in batch]
    mels, faces, given = await clock.run(STAGE, pool, _batch_inputs, batch, face_size)
    started = asyncio.get_running_loop().time()
    result = await client.infer(model, {"mel": mels, "face": faces}, ["pred"])
    clock.add(STAGE, asyncio.get_running_loop().time() - started)
    pred = result["pred"]
    if restorer is not None:
        pred = await _restore(pred, client, restorer, pool, clock)
    generated = iter(zip(await clock.run(STAGE, pool, pred_to_crops, pred), given, strict=True))
    return [
        GeneratedFrame(item, *next(generated))
        if item.box is not None
        else GeneratedFrame(item, None)
        for item in batch
    ]


async def infer(
    source: asyncio.Queue[DrivenFrame | None],
    out: asyncio.Queue[BatchTask | None],
    group: asyncio.TaskGroup,
    client: TritonClient,
    model: str,
    face_size: int,
    batch_size: int,
    pool: Executor,
    clock: StageClock,
    restorer: FaceRestorer | None = None,
) -> None:
    """`out` is bounded: its size is the number of batches in flight. With a `restorer`
    the generated faces are restored (at its size) before they go on."""
    batch: list[DrivenFrame] = []
    sizes = batch_sizes(batch_size)
    size = next(sizes)
    while True:
        item = await source.get()
        if item is not END:
            batch.append(item)
        if batch and (item is END or len(batch) == size):
            work = _infer_batch(batch, client, model, face_size, pool, clock, restorer)
            task = group.create_task(guarded(STAGE, work))
            await out.put(task)
            batch, size = [], next(sizes)
        if item is END:
            await out.put(END)
            return
