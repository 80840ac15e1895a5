from __future__ import annotations

import numpy as np

from orchestrator.pipeline import boxes


def test_interpolation_blends_between_keyframes_with_faces() -> None:
    key = np.array([[0, 0, 10, 10], [10, 20, 30, 40]], np.float64)
    out = boxes.interpolate([0, 4], key, 5)
    np.testing.assert_allclose(out[2], [5, 10, 20, 25])
    np.testing.assert_allclose(out[4], key[1])


def test_no_face_is_never_invented_next_to_a_faceless_keyframe() -> None:
    key = np.array([[0, 0, 10, 10], [-1, -1, -1, -1], [0, 0, 10, 10]], np.float64)
    out = boxes.interpolate([0, 3, 6], key, 7)
    assert boxes.has_face(out).tolist() == [True, False, False, False, False, False, True]


def test_padding_keeps_the_chin_in_and_stays_in_the_frame() -> None:
    face = np.array([[10, 10, 50, 90], [10, 10, 50, 98]], np.float64)
    out = boxes.pad(face, 64, 100)
    assert out[0, 3] == 90 + boxes.PAD_BOTTOM * 80
    assert out[1, 3] == 100, "clamped to the frame height"
    np.testing.assert_array_equal(out[:, :3], face[:, :3])


def test_smoothing_averages_jitter_within_a_run_only() -> None:
    jitter = np.array([[0, 0, 10, 10], [2, 0, 12, 10]] * 5 + [[-1, -1, -1, -1]], np.float64)
    out = boxes.smooth(jitter)
    assert np.ptp(out[2:8, 0]) < np.ptp(jitter[2:8, 0])
    np.testing.assert_array_equal(out[-1], [-1, -1, -1, -1])


def test_track_gives_integer_boxes_inside_the_frame() -> None:
    key = np.array([[-5.5, 3.2, 40.7, 60.1], [0, 0, 41, 61]], np.float64)
    out = boxes.track([0, 5], key, 6, 40, 60)
    assert out.dtype == np.int32
    assert (out[:, 0] >= 0).all() and (out[:, 2] <= 40).all() and (out[:, 3] <= 60).all()


def test_rows_published_as_keyframes_settle_equal_the_whole_track() -> None:
    rng = np.random.default_rng(3)
    keyframes = [0, 4, 8, 12, 16, 20, 24, 28, 32, 33]
    key_boxes = np.array([[100, 80, 200, 210]] * len(keyframes), np.float64)
    key_boxes += rng.normal(0, 3, key_boxes.shape)
    key_boxes[5] = boxes.NO_FACE  # a run of frames without a face in the middle
    whole = boxes.track(keyframes, key_boxes, 34, 320, 240)

    published: list[np.ndarray] = []
    done = 0
    for count in range(1, len(keyframes) + 1):
        settled = keyframes[count - 1]
        rows = boxes.track_rows(
            keyframes[:count], key_boxes[:count], done, settled, count == len(keyframes), 320, 240
        )
        published.append(rows)
        done += len(rows)

    np.testing.assert_array_equal(np.concatenate(published), whole)
    assert done == 34
