"""composite: the generated face, resized to its box and blended into the frame.

Two modes, chosen by the lipsync model's Triton config (`parameters { key: "composite" }`,
read at start-up; models.py):

- **replace** (the default, for real generators): the generated lower face itself, resized
  to the box and feathered in over the lower-face mask, as Wav2Lip pastes its output. A
  generator redraws the whole lower face (Wav2Lip sees it zeroed), so whatever the avatar's
  mouth was doing must not show through: inside the mask the frame is the generated face.
- **delta** (the analytic reference models this repo builds): only what the model changed,
  explained below. Their output is the reference crop plus an exact change, so adding the
  change keeps the frame sharp and an unchanged face bit for bit.

In delta mode: the model sees the box as an S x S crop (S = 96 for Wav2Lip); pasting its
output back, resized up, would blur the whole box even where the model changed nothing. So
the blend adds the *difference* between the generated crop and the crop the model was
given, resized to the box, weighted by the same lower-face mask. Where the model returned
the reference unchanged (the reference model in silence) the frame comes out bit for bit
as it went in, sharp; where it opened the mouth, the change carries the frame's own detail
along with it. For a real generator this would be wrong: its new mouth minus the old one,
added to the old one, leaves the old mouth's edges wherever the two disagree.

In both modes the mask is zero on the box's border, so the seam is invisible and every
pixel outside the box is exactly the avatar's.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from enum import StrEnum
from functools import lru_cache

import cv2
import numpy as np

from orchestrator.pipeline.infer import BatchTask, face_crop
from orchestrator.pipeline.stages import END, GeneratedFrame, StageClock

STAGE = "composite"


class CompositeMode(StrEnum):
    REPLACE = "replace"  # paste the generated lower face (real generators)
    DELTA = "delta"  # add what the model changed (the analytic reference models)


# A lipsync model whose config names no mode is a real generator.
DEFAULT_MODE = CompositeMode.REPLACE
# Width of the soft edge at the box's border, as a fraction of its shorter side.
FEATHER = 0.12
# The lower face as an ellipse in box fractions: centre (x, y) and half axes (x, y). It
# covers the mouth (two thirds down a Wav2Lip-padded box) and the jaw to the box's bottom
# and sides; Wav2Lip itself regenerates the lower half of the crop.
LOWER_FACE_CENTRE = (0.5, 0.72)
LOWER_FACE_AXES = (0.46, 0.34)
# Width of the ellipse's soft edge, as a fraction of its radius.
LOWER_FACE_SOFTNESS = 0.3


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


@lru_cache(maxsize=64)
def lower_face_mask(height: int, width: int) -> np.ndarray:
    """[h, w, 1] float32: 1 over the mouth and jaw, soft-edged, 0 on the box's border."""
    (cx, cy), (ax, ay) = LOWER_FACE_CENTRE, LOWER_FACE_AXES
    y = ((np.arange(height, dtype=np.float32) + 0.5) / height - cy) / ay
    x = ((np.arange(width, dtype=np.float32) + 0.5) / width - cx) / ax
    radius = np.sqrt(y[:, None] ** 2 + x[None, :] ** 2)
    ellipse = np.clip((1.0 - radius) / LOWER_FACE_SOFTNESS, 0.0, 1.0)
    smooth = ellipse * ellipse * (3.0 - 2.0 * ellipse)
    mask: np.ndarray = (smooth[..., None] * feather_mask(height, width)).astype(np.float32)
    mask.setflags(write=False)
    return mask


@lru_cache(maxsize=64)
def _lower_face_mask_bgr(height: int, width: int) -> np.ndarray:
    """lower_face_mask on all three channels: OpenCV multiplies equal shapes ~10x faster
    than numpy broadcasts [h, w, 1] over [h, w, 3]."""
    mask = np.ascontiguousarray(np.repeat(lower_face_mask(height, width), 3, axis=2))
    mask.setflags(write=False)
    return mask


def composite_frame(
    frame: np.ndarray,
    box: tuple[int, int, int, int],
    face: np.ndarray,
    given: np.ndarray | None = None,
    mode: CompositeMode = CompositeMode.DELTA,
) -> np.ndarray:
    """A new frame: `frame` with the generated `face` blended into the crop of `box`.

    `face` is the model's [R, R, 3] BGR uint8 output for the crop of `frame` at `box` (R is
    the lipsync face size S, or the face restorer's size); nothing outside `box` changes.
    REPLACE pastes `face` over the lower face; DELTA adds the change `face` makes to
    `given`, the crop the model was given (`infer.face_crop`), made here when the caller
    has none or has it at another size.
    """
    x1, y1, x2, y2 = box
    width, height = x2 - x1, y2 - y1
    out = frame.copy()
    region = out[y1:y2, x1:x2]
    if mode == CompositeMode.REPLACE:
        # The change from the frame to the generated face, at the box's resolution.
        blended = np.asarray(
            cv2.resize(face, (width, height), interpolation=cv2.INTER_LINEAR), np.float32
        )
        np.subtract(blended, region, out=blended, dtype=np.float32)
    else:
        if given is None or given.shape != face.shape:
            given = face_crop(frame, box, face.shape[0])
        change = face.astype(np.float32)
        change -= given
        if not change.any():
            return out  # the model returned its input: nothing to blend, and nothing to blur
        # In place, one box-sized float buffer: at 1080p the box is ~0.25 Mpx and each extra
        # temporary cost about a millisecond.
        blended = np.asarray(
            cv2.resize(change, (width, height), interpolation=cv2.INTER_LINEAR), np.float32
        )
    cv2.multiply(blended, _lower_face_mask_bgr(height, width), dst=blended)
    np.add(blended, region, out=blended)
    np.add(blended, 0.5, out=blended)
    np.floor(blended, out=blended)
    np.clip(blended, 0, 255, out=blended)
    region[...] = blended  # whole numbers in [0, 255]: the cast to uint8 is exact
    return out


def _composite(generated: GeneratedFrame, mode: CompositeMode) -> np.ndarray:
    driven = generated.driven
    if generated.face is None or driven.box is None:
        return driven.frame  # no face: passed through unchanged
    return composite_frame(driven.frame, driven.box, generated.face, generated.given, mode)


async def composite(
    source: asyncio.Queue[BatchTask | None],
    out: asyncio.Queue[np.ndarray | None],
    pool: Executor,
    clock: StageClock,
    mode: CompositeMode = CompositeMode.DELTA,
) -> None:
    while (task := await source.get()) is not END:
        for generated in await task:
            await out.put(await clock.run(STAGE, pool, _composite, generated, mode))
    await out.put(END)
