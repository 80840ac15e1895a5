"""faces: every face the detector found, and the one face a job chooses to animate.

Detection keeps all faces of every keyframe (`KeyframeFaces`), beside the per-frame track
of the largest face that the prepared avatar renders by default. A job may choose another
face (`FaceChoice`): by index (faces of the first frame where any is found, counted from 0
left to right) or by a point in that frame (the face whose box holds it, else the nearest
one near enough). The chosen face is then followed from keyframe to keyframe by overlap
with its previous box (`follow`); a keyframe where nothing overlaps it enough has no face
there, so those frames are passed through unchanged, and interpolation, padding and
smoothing are the default track's (boxes.track).

Pure functions and values: no I/O but `save`/`load` of the arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.detection import iou
from orchestrator.pipeline import boxes as face_boxes

LARGEST = "largest"
# Overlap with the face's previous box at which a detection is still that face. Two faces
# side by side do not overlap at all, while one face between keyframes at most
# DH_DETECT_STRIDE_MAX frames apart still overlaps itself by far more.
FOLLOW_IOU = 0.3
# A point outside every box still names the nearest face when it is within this many of
# that face's box sides (its larger side) of the box; farther away it names none.
POINT_REACH = 0.5


class NoSuchFace(ValueError):
    """A choice that names none of the faces; its message lists the ones there are."""


@dataclass(frozen=True)
class FaceChoice:
    """Which face a job animates: the largest (default), the `index`-th from the left, or
    the one at `point` (x, y in pixels), all in the first frame where faces are found."""

    index: int | None = None
    point: tuple[float, float] | None = None

    @property
    def is_default(self) -> bool:
        return self.index is None and self.point is None

    @classmethod
    def parse(cls, text: str | None) -> FaceChoice:
        """`largest` (or empty), `K` or `X,Y`; ValueError with the reason otherwise."""
        value = (text or "").strip().lower()
        if value in ("", LARGEST):
            return cls()
        parts = [p.strip() for p in value.split(",")]
        try:
            if len(parts) == 1:
                index = int(parts[0])
                if index < 0:
                    raise ValueError
                return cls(index=index)
            if len(parts) == 2:
                x, y = float(parts[0]), float(parts[1])
                if not (np.isfinite(x) and np.isfinite(y)) or x < 0 or y < 0:
                    raise ValueError
                return cls(point=(x, y))
        except ValueError:
            pass
        raise ValueError(
            f"face must be 'largest', a face index K >= 0 or a point X,Y in pixels; not '{text}'"
        )

    def __str__(self) -> str:
        if self.index is not None:
            return str(self.index)
        if self.point is not None:
            return f"{self.point[0]:g},{self.point[1]:g}"
        return LARGEST


# The default choice, shared: a FaceChoice is immutable.
DEFAULT_CHOICE = FaceChoice()


@dataclass(frozen=True)
class KeyframeFaces:
    """Every face found on each detected keyframe, keyframes ascending. `boxes[i]` is the
    [n, 4] float array (x1, y1, x2, y2, frame pixels) of keyframe `frames[i]`, best first."""

    frames: list[int]
    boxes: list[np.ndarray]
    scores: list[np.ndarray]

    def first(self) -> tuple[int, np.ndarray] | None:
        """The first keyframe with faces and its boxes, left to right; None if none has."""
        for frame, found in zip(self.frames, self.boxes, strict=True):
            if len(found):
                return frame, left_to_right(found)
        return None

    def save(self, path: Path) -> None:
        counts = np.array([len(b) for b in self.boxes], np.int32)
        np.savez(
            path,
            frames=np.array(self.frames, np.int32),
            counts=counts,
            boxes=np.concatenate([*self.boxes, np.zeros((0, 4))]).astype(np.float32),
            scores=np.concatenate([*self.scores, np.zeros(0)]).astype(np.float32),
        )

    @classmethod
    def load(cls, path: Path) -> KeyframeFaces:
        with np.load(path) as stored:
            frames, counts = stored["frames"], stored["counts"]
            ends = np.cumsum(counts)[:-1]
            if not len(frames):
                return cls([], [], [])
            boxes = np.split(stored["boxes"].astype(np.float64), ends)
            scores = np.split(stored["scores"].astype(np.float64), ends)
        return cls([int(f) for f in frames], boxes, scores)


def largest(found: np.ndarray) -> np.ndarray | None:
    """The largest box by area (the first of equals), or None when there is none."""
    if not len(found):
        return None
    areas = (found[:, 2] - found[:, 0]) * (found[:, 3] - found[:, 1])
    return np.asarray(found[int(np.argmax(areas))], np.float64)


def left_to_right(found: np.ndarray) -> np.ndarray:
    """Boxes ordered by their centre's x (then y): the order face indices count in."""
    centres_x = found[:, 0] + found[:, 2]
    centres_y = found[:, 1] + found[:, 3]
    return found[np.lexsort((centres_y, centres_x))]


def describe_faces(frame: int, found: np.ndarray) -> str:
    """The faces of a frame as a user reads them in an error message."""
    listed = ", ".join(
        f"{i}: ({x1:.0f}, {y1:.0f})-({x2:.0f}, {y2:.0f})"
        for i, (x1, y1, x2, y2) in enumerate(found.tolist())
    )
    return f"frame {frame} has {len(found)} face{'s' if len(found) != 1 else ''} ({listed})"


def pick(found: np.ndarray, choice: FaceChoice, frame: int = 0) -> int:
    """The index into `found` (boxes left to right) that `choice` names; NoSuchFace when it
    names none (an index out of range, a point far from every box)."""
    if choice.index is not None:
        if choice.index < len(found):
            return choice.index
        raise NoSuchFace(f"face {choice.index} is not there: {describe_faces(frame, found)}")
    assert choice.point is not None, "the default choice picks no index"
    x, y = choice.point
    # Distance from the point to each box (0 inside), and the box's reach.
    dx = np.maximum(np.maximum(found[:, 0] - x, x - found[:, 2]), 0)
    dy = np.maximum(np.maximum(found[:, 1] - y, y - found[:, 3]), 0)
    distance = np.hypot(dx, dy)
    sides = np.maximum(found[:, 2] - found[:, 0], found[:, 3] - found[:, 1])
    centres = np.hypot((found[:, 0] + found[:, 2]) / 2 - x, (found[:, 1] + found[:, 3]) / 2 - y)
    # Inside two boxes at once: the one whose centre is nearer.
    nearest = int(np.lexsort((centres, distance))[0]) if len(found) else -1
    if nearest >= 0 and distance[nearest] <= POINT_REACH * sides[nearest]:
        return nearest
    raise NoSuchFace(f"no face at or near ({x:g}, {y:g}): {describe_faces(frame, found)}")


def follow(
    faces: KeyframeFaces, start: int, start_box: np.ndarray, min_iou: float = FOLLOW_IOU
) -> np.ndarray:
    """The chosen face's box on each keyframe ([K, 4], NO_FACE rows where it is not
    there): `start_box` on keyframe `start`, none before it, and after it the face that
    overlaps the face's last box found by at least `min_iou` (the most overlapping)."""
    rows = np.full((len(faces.frames), 4), face_boxes.NO_FACE, np.float64)
    last = np.asarray(start_box, np.float64)
    for i, (frame, found) in enumerate(zip(faces.frames, faces.boxes, strict=True)):
        if frame < start:
            continue
        if frame == start:
            rows[i] = last
            continue
        overlaps = [iou(last, box) for box in found]
        if overlaps and max(overlaps) >= min_iou:
            last = np.asarray(found[int(np.argmax(overlaps))], np.float64)
            rows[i] = last
    return rows


def chosen_track(
    faces: KeyframeFaces, choice: FaceChoice, frame_count: int, width: int, height: int
) -> np.ndarray:
    """Per-frame integer boxes ([frame_count, 4], -1 where the face is lost) of the face
    `choice` names, followed across keyframes; NoSuchFace when it names none."""
    first = faces.first()
    if first is None:
        raise NoSuchFace("the avatar has no face to choose from")
    frame, found = first
    key_boxes = follow(faces, frame, found[pick(found, choice, frame)])
    return face_boxes.track(faces.frames, key_boxes, frame_count, width, height)


def first_frame_faces(faces: KeyframeFaces) -> tuple[int, list[tuple[float, ...]]] | None:
    """The first frame with faces and their boxes left to right, as plain numbers."""
    first = faces.first()
    if first is None:
        return None
    frame, found = first
    return frame, [tuple(round(float(v), 1) for v in box) for box in found]
