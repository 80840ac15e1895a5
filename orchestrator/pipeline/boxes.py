"""Face-box maths for the avatar stage: pure functions on [N, 4] arrays of x1, y1, x2, y2.

A frame without a face has the row NO_FACE (all -1).
"""

from __future__ import annotations

import bisect

import numpy as np

NO_FACE = -1.0
# S3FD boxes end at the chin; Wav2Lip pads 10 px below it at its working size (faces of
# ~100 px), so pad 10 % of the box height below and nothing elsewhere.
PAD_BOTTOM = 0.10
PAD_TOP = 0.0
PAD_SIDES = 0.0
# Wav2Lip smooths boxes with a moving average over 5 frames to stop the crop jittering.
SMOOTHING_FRAMES = 5


def has_face(boxes: np.ndarray) -> np.ndarray:
    return boxes[:, 2] > boxes[:, 0]


def interpolate(keyframes: list[int], key_boxes: np.ndarray, frame_count: int) -> np.ndarray:
    """Boxes for every frame from boxes detected on `keyframes` (ascending).

    A frame between two keyframes that both have a face gets the linear blend of the two;
    a frame next to a keyframe without a face gets none, so faces are never invented.
    """
    boxes = np.full((frame_count, 4), NO_FACE, np.float64)
    for i, key in enumerate(keyframes):
        boxes[key] = key_boxes[i]
    found = has_face(key_boxes)
    for i in range(len(keyframes) - 1):
        a, b = keyframes[i], keyframes[i + 1]
        if b - a > 1 and found[i] and found[i + 1]:
            t = (np.arange(a + 1, b) - a)[:, None] / (b - a)
            boxes[a + 1 : b] = key_boxes[i] * (1 - t) + key_boxes[i + 1] * t
    return boxes


def pad(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Grows face boxes so the chin is inside, clamped to the frame."""
    out = boxes.copy()
    face = has_face(boxes)
    w = boxes[face, 2] - boxes[face, 0]
    h = boxes[face, 3] - boxes[face, 1]
    out[face, 0] = np.maximum(0, boxes[face, 0] - PAD_SIDES * w)
    out[face, 1] = np.maximum(0, boxes[face, 1] - PAD_TOP * h)
    out[face, 2] = np.minimum(width, boxes[face, 2] + PAD_SIDES * w)
    out[face, 3] = np.minimum(height, boxes[face, 3] + PAD_BOTTOM * h)
    return out


def smooth(boxes: np.ndarray, window: int = SMOOTHING_FRAMES) -> np.ndarray:
    """Moving average over `window` frames inside each run of frames that have a face.

    Each row is the sum of its neighbours in a fixed order, so a row comes out bit for bit
    the same whether it is smoothed in a prefix of the frames or in all of them
    (track_rows relies on it)."""
    out = boxes.copy()
    face = has_face(boxes)
    n = len(boxes)
    start = 0
    while start < n:
        if not face[start]:
            start += 1
            continue
        end = start
        while end < n and face[end]:
            end += 1
        run = boxes[start:end]
        half = window // 2
        padded = np.concatenate([np.repeat(run[:1], half, 0), run, np.repeat(run[-1:], half, 0)])
        total = np.zeros_like(run)
        for shift in range(window):
            total += padded[shift : shift + end - start]
        out[start:end] = total / window
        start = end
    return out


def to_pixels(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Integer boxes inside the frame, at least 2 px each way; NO_FACE rows stay -1."""
    out = np.full(boxes.shape, -1, np.int32)
    face = has_face(boxes)
    x1 = np.clip(np.floor(boxes[face, 0]), 0, width - 2)
    y1 = np.clip(np.floor(boxes[face, 1]), 0, height - 2)
    x2 = np.clip(np.ceil(boxes[face, 2]), x1 + 2, width)
    y2 = np.clip(np.ceil(boxes[face, 3]), y1 + 2, height)
    out[face] = np.stack([x1, y1, x2, y2], axis=1).astype(np.int32)
    return out


def track(
    keyframes: list[int], key_boxes: np.ndarray, frame_count: int, width: int, height: int
) -> np.ndarray:
    """Per-frame integer face boxes: interpolated, padded, smoothed and clamped."""
    boxes = interpolate(keyframes, key_boxes, frame_count)
    return to_pixels(smooth(pad(boxes, width, height)), width, height)


def track_rows(
    keyframes: list[int],
    key_boxes: np.ndarray,
    first: int,
    settled: int,
    ends: bool,
    width: int,
    height: int,
) -> np.ndarray:
    """The rows of `track` from frame `first` on that keyframes up to `settled` (the last
    one given, with no keyframe ever to be added before it) already fix: up to `settled`
    itself when the avatar `ends` there, else up to the smoothing window before it. The
    rows equal those `track` gives once every keyframe is known; only a window around
    them is computed, so publishing an avatar as it is prepared costs O(new rows)."""
    half = SMOOTHING_FRAMES // 2
    stop = settled + 1 if ends else settled + 1 - half
    if stop <= first:
        return np.zeros((0, 4), np.int32)
    # Rows from `first` on depend on interpolated rows from `first - half` on, which
    # depend on the keyframe at or before that.
    origin_at = max(0, bisect.bisect_right(keyframes, max(0, first - half)) - 1)
    origin = keyframes[origin_at]
    local = [k - origin for k in keyframes[origin_at:]]
    boxes = interpolate(local, key_boxes[origin_at:], settled - origin + 1)
    rows = to_pixels(smooth(pad(boxes, width, height)), width, height)
    return rows[first - origin : stop - origin]
