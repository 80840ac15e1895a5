"""Face boxes from the face detector's decoded outputs: score threshold, then greedy NMS."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# S3FD's reference detector keeps priors scoring above 0.8 and merges those overlapping
# by more than IoU 0.1 (the reference S3FD detector's own settings).
SCORE_THRESHOLD = 0.8
IOU_THRESHOLD = 0.1


@dataclass(frozen=True)
class FaceDetection:
    """One face: its box in input pixels (x1, y1 top-left; x2, y2 bottom-right) and score."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)


def iou(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0.0 when both are empty."""
    return float(_iou_one_to_many(np.asarray(a, np.float64), np.asarray([b], np.float64))[0])


def select_faces(
    boxes: np.ndarray,
    scores: np.ndarray,
    score_threshold: float = SCORE_THRESHOLD,
    iou_threshold: float = IOU_THRESHOLD,
) -> list[FaceDetection]:
    """Faces scoring above `score_threshold`, best first, none overlapping another by more
    than `iou_threshold`. `boxes` is [N, 4] (x1, y1, x2, y2), `scores` is [N]."""
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (boxes.shape[0],):
        raise ValueError(f"boxes must be [N, 4] and scores [N]; got {boxes.shape}, {scores.shape}")
    confident = scores > score_threshold
    candidates = boxes[confident].astype(np.float64)
    candidate_scores = scores[confident].astype(np.float64)
    # Stable, so equal scores keep the detector's prior order and results are reproducible.
    order = np.argsort(-candidate_scores, kind="stable")
    kept: list[FaceDetection] = []
    while order.size:
        best, rest = order[0], order[1:]
        x1, y1, x2, y2 = (float(v) for v in candidates[best])
        kept.append(FaceDetection(x1, y1, x2, y2, float(candidate_scores[best])))
        overlaps = _iou_one_to_many(candidates[best], candidates[rest])
        order = rest[overlaps <= iou_threshold]
    return kept


def _iou_one_to_many(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    width = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    intersection = width * height
    area = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
    other_areas = np.clip(others[:, 2] - others[:, 0], 0, None) * np.clip(
        others[:, 3] - others[:, 1], 0, None
    )
    union = area + other_areas - intersection
    overlap: np.ndarray = np.divide(
        intersection, union, out=np.zeros_like(intersection), where=union > 0
    )
    return overlap
