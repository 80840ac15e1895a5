"""Reading outputs back the way a viewer sees them, for assertions."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from orchestrator.pipeline.avatar_cache import Avatar


def decode_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


def avatar_frames(avatar: Avatar) -> list[np.ndarray]:
    with avatar.open_frames() as store:
        return [store.read(i).copy() for i in range(avatar.frame_count)]


def region_mean(
    frame: np.ndarray, box: np.ndarray, rows: tuple[float, float], cols: tuple[float, float]
) -> float:
    x1, y1, x2, y2 = (int(v) for v in box)
    h, w = y2 - y1, x2 - x1
    top, bottom = y1 + int(rows[0] * h), y1 + int(rows[1] * h)
    left, right = x1 + int(cols[0] * w), x1 + int(cols[1] * w)
    return float(frame[top:bottom, left:right].mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
