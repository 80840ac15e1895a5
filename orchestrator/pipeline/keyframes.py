"""Which avatar frames the face detector looks at: an adaptive stride.

Detection is most of an avatar's preparation, and an idle or talking head barely moves.
Frames are first detected on a coarse grid (every `stride_max`-th frame, and always the
first and the last); where two neighbouring detections disagree (the face moved, appeared
or vanished; or any other face did, since a job may choose that one: faces.py) the frame
halfway between them is detected too, and so on until neighbours agree or are at most
`stride_min` frames apart. Frames between two agreeing keyframes are
interpolated (boxes.py).

The plan is pure bookkeeping, no I/O: the avatar stage feeds it decoded frames and
detections and sends what it asks for. Its `settled` keyframe is how far boxes are final:
no keyframe at or before it will ever be added, so the frames up to it can be rendered
while later ones are still being detected.
"""

from __future__ import annotations

import bisect

import numpy as np

from orchestrator.detection import iou
from orchestrator.pipeline.boxes import NO_FACE


def agree(a: np.ndarray, b: np.ndarray, min_iou: float) -> bool:
    """Two detections agree when neither has a face, or both do and overlap by `min_iou`."""
    face_a, face_b = bool(a[2] > a[0]), bool(b[2] > b[0])
    if face_a != face_b:
        return False
    return not face_a or iou(a, b) >= min_iou


def faces_agree(a: np.ndarray, b: np.ndarray, min_iou: float) -> bool:
    """Two keyframes' sets of faces ([n, 4] each) agree when they hold as many faces and
    each face of `a` overlaps one of `b` by `min_iou`: no face moved, appeared or vanished."""
    if len(a) != len(b):
        return False
    return all(max(iou(face, other) for other in b) >= min_iou for face in a)


class KeyframePlan:
    """The keyframes of one avatar, requested and detected, in frame order."""

    def __init__(self, stride_min: int, stride_max: int, agree_iou: float) -> None:
        self.stride_min = max(1, stride_min)
        self.stride_max = max(self.stride_min, stride_max)
        self.agree_iou = agree_iou
        self.requested: list[int] = []  # ascending
        self.detected: dict[int, np.ndarray] = {}
        self.faces: dict[int, np.ndarray] = {}  # every face of a keyframe, where given
        self._next_grid = 0
        # requested[_frontier] is the settled keyframe: every gap before it is final.
        self._frontier = -1

    def grid(self, decoded: int, complete: bool) -> list[int]:
        """Coarse keyframes among the first `decoded` frames not asked for yet; once the
        video is `complete` its last frame too, so interpolation reaches the end."""
        due = []
        while self._next_grid < decoded:
            due.append(self._next_grid)
            self._next_grid += self.stride_max
        latest = due[-1] if due else (self.requested[-1] if self.requested else -1)
        if complete and latest < decoded - 1:
            due.append(decoded - 1)
        self.requested.extend(due)
        return due

    def record(self, frame: int, box: np.ndarray, faces: np.ndarray | None = None) -> list[int]:
        """Takes the detection of `frame`: the tracked `box` (NO_FACE row when none) and
        every face found ([n, 4], when known); returns the frames that must be detected
        because of it: midpoints of gaps whose ends disagree."""
        self.detected[frame] = np.asarray(box, np.float64)
        if faces is not None:
            self.faces[frame] = np.asarray(faces, np.float64).reshape(-1, 4)
        position = bisect.bisect_left(self.requested, frame)
        due = []
        for left in (position - 1, position):
            if left < 0 or left + 1 >= len(self.requested):
                continue
            middle = self._midpoint(self.requested[left], self.requested[left + 1])
            if middle is not None:
                due.append(middle)
        for middle in due:
            bisect.insort(self.requested, middle)
        return due

    def settled(self) -> int:
        """The last keyframe up to which every gap is detected and final; -1 for none."""
        if self._frontier < 0:
            if not self.requested or self.requested[0] not in self.detected:
                return -1
            self._frontier = 0
        while self._frontier + 1 < len(self.requested):
            a, b = self.requested[self._frontier], self.requested[self._frontier + 1]
            if b not in self.detected or self._needs_midpoint(a, b):
                break
            self._frontier += 1
        return self.requested[self._frontier]

    def keyframes(self, until: int) -> tuple[list[int], np.ndarray]:
        """Detected keyframes up to frame `until` and their boxes ([K, 4])."""
        frames = self.requested[: bisect.bisect_right(self.requested, until)]
        boxes = [self.detected[f] for f in frames]
        return frames, np.array(boxes, np.float64).reshape(-1, 4)

    def _needs_midpoint(self, a: int, b: int) -> bool:
        if b - a <= self.stride_min:
            return False
        if not agree(self.detected[a], self.detected[b], self.agree_iou):
            return True
        faces_a, faces_b = self.faces.get(a), self.faces.get(b)
        if faces_a is None or faces_b is None:
            return False
        return not faces_agree(faces_a, faces_b, self.agree_iou)

    def _midpoint(self, a: int, b: int) -> int | None:
        if a in self.detected and b in self.detected and self._needs_midpoint(a, b):
            return (a + b) // 2
        return None


def no_face() -> np.ndarray:
    return np.full(4, NO_FACE, np.float64)
