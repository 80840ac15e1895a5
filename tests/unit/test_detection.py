"""Choosing faces among the detector's scored prior boxes."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.detection import iou, select_faces


def _boxes(*rows: tuple[float, float, float, float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32).reshape(-1, 4)


def test_iou_of_identical_boxes_is_one() -> None:
    assert iou((10, 10, 50, 30), (10, 10, 50, 30)) == pytest.approx(1.0)


def test_iou_of_disjoint_and_touching_boxes_is_zero() -> None:
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0


def test_iou_of_half_overlapping_boxes() -> None:
    # Intersection 5x10 = 50, union 100 + 100 - 50 = 150.
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)


def test_iou_of_empty_boxes_is_zero_not_nan() -> None:
    assert iou((5, 5, 5, 5), (5, 5, 5, 5)) == 0.0


def test_overlapping_priors_on_one_face_become_one_detection_with_the_best_score() -> None:
    boxes = _boxes((100, 100, 200, 220), (102, 98, 201, 218), (99, 103, 198, 221))
    scores = np.array([0.95, 0.99, 0.9], dtype=np.float32)

    (face,) = select_faces(boxes, scores)

    assert face.box == (102.0, 98.0, 201.0, 218.0)
    assert face.score == pytest.approx(0.99)


def test_two_separate_faces_are_both_kept_best_first() -> None:
    boxes = _boxes((10, 10, 60, 70), (300, 40, 360, 110))
    scores = np.array([0.85, 0.97], dtype=np.float32)

    faces = select_faces(boxes, scores)

    assert [face.box for face in faces] == [(300, 40, 360, 110), (10, 10, 60, 70)]
    assert faces[0].score > faces[1].score


def test_boxes_scoring_at_or_below_the_threshold_are_not_faces() -> None:
    boxes = _boxes((0, 0, 10, 10), (50, 50, 60, 60))
    scores = np.array([0.8, 0.5], dtype=np.float32)

    assert select_faces(boxes, scores, score_threshold=0.8) == []


def test_a_slight_overlap_above_the_iou_threshold_suppresses_the_weaker_box() -> None:
    # IoU of these two is 10*10 / (100*100*2 - 100) ≈ 0.005: kept at 0.1, suppressed at 0.001.
    boxes = _boxes((0, 0, 100, 100), (90, 90, 190, 190))
    scores = np.array([0.99, 0.95], dtype=np.float32)

    assert len(select_faces(boxes, scores)) == 2
    assert len(select_faces(boxes, scores, iou_threshold=0.001)) == 1


def test_no_priors_give_no_faces() -> None:
    assert select_faces(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)) == []


def test_detections_hold_plain_floats() -> None:
    (face,) = select_faces(_boxes((1, 2, 3, 4)), np.array([0.9], np.float32))

    assert all(type(value) is float for value in (*face.box, face.score))


def test_mismatched_boxes_and_scores_are_refused() -> None:
    with pytest.raises(ValueError, match="boxes must be"):
        select_faces(_boxes((0, 0, 1, 1), (0, 0, 2, 2)), np.array([0.9], np.float32))
