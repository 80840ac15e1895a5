"""composite: the generated face resized to its box and blended into the avatar frame.

The blend uses a feathered mask that falls to zero at the box's edge, so the seam is soft
and every pixel outside the padded face box is exactly the avatar's.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from functools import lru_cache

import cv2
import numpy as np

from orchestrator.pipeline.infer import BatchTask
from orchestrator.pipeline.stages import END, GeneratedFrame, StageClock

STAGE = "composite"
# Width of the soft edge as a fraction of the box's shorter side: wide enough to hide the
# seam, narrow enough to keep the generated mouth at full strength.
FEATHER = 0.12


@lru_cache(maxsize=64)
def feather_mask(height: int, width: int, feather: float = FEATHER) -> np.ndarray:
    """[h, w, 1] float32: 1 inside, ramping linearly to 0 at the border pixels."""
    ramp = max(1.0, feather * min(height, width))
    rows = np.minimum(np.arange(height), np.arange(height)[::-1]).astype(np.float32)
    cols = np.minimum(np.arange(width), np.arange(width)[::-1]).astype(np.float32)
    distance = np.minimum(rows[:, None], cols[None, :])
    mask = np.clip(distance / ramp, 0.0, 1.0)[..., None]
    mask.setflags(write=False)
    return mask


def composite_frame(
    frame: np.ndarray, box: tuple[int, int, int, int], face: np.ndarray
) -> np.ndarray:
    """A new frame: `frame` with `face` blended into `box`; nothing outside `box` changes."""
    x1, y1, x2, y2 = box
    width, height = x2 - x1, y2 - y1
    resized = cv2.resize(face, (width, height), interpolation=cv2.INTER_LINEAR)
    mask = feather_mask(height, width)
    out = frame.copy()
    region = out[y1:y2, x1:x2].astype(np.float32)
    blended = region + (resized.astype(np.float32) - region) * mask
    out[y1:y2, x1:x2] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return out


def _composite(generated: GeneratedFrame) -> np.ndarray:
    driven = generated.driven
    if generated.face is None or driven.box is None:
        return driven.frame  # no face: passed through unchanged
    return composite_frame(driven.frame, driven.box, generated.face)


async def composite(
    source: asyncio.Queue[BatchTask | None],
    out: asyncio.Queue[np.ndarray | None],
    pool: Executor,
    clock: StageClock,
) -> None:
    while (task := await source.get()) is not END:
        for generated in await task:
            await out.put(await clock.run(STAGE, pool, _composite, generated))
    await out.put(END)
