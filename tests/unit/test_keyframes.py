"""The adaptive detection stride: sparse while detections agree, dense where the face
moves, and a settled keyframe that never moves back."""

from __future__ import annotations

import numpy as np

from orchestrator.pipeline.keyframes import KeyframePlan, agree, faces_agree, no_face

FACE = np.array([100.0, 100.0, 200.0, 220.0])


def _run(truth: list[np.ndarray], stride_min: int, stride_max: int) -> KeyframePlan:
    """Feeds a whole video to a plan, answering every request from `truth`, in order."""
    plan = KeyframePlan(stride_min, stride_max, agree_iou=0.9)
    queue: list[int] = []
    for decoded in range(1, len(truth) + 1):
        queue += plan.grid(decoded, complete=False)
    queue += plan.grid(len(truth), complete=True)
    for _ in range(10 * len(truth)):  # bounded: each frame is asked for at most once
        if not queue:
            break
        frame = queue.pop(0)
        queue += plan.record(frame, truth[frame])
    assert not queue, "the plan kept asking for frames"
    return plan


def test_a_still_face_is_detected_on_the_coarse_grid_and_the_last_frame() -> None:
    plan = _run([FACE] * 50, stride_min=4, stride_max=16)

    assert sorted(plan.detected) == [0, 16, 32, 48, 49]
    assert plan.settled() == 49


def test_a_moving_face_is_detected_down_to_the_densest_stride() -> None:
    # Still for 32 frames, then moving 10 px a frame.
    truth = [FACE + 10.0 * max(0, i - 32) * np.array([1, 0, 1, 0]) for i in range(65)]
    plan = _run(truth, stride_min=4, stride_max=16)

    detected = sorted(plan.detected)
    assert detected[:3] == [0, 16, 32], "the still part stays sparse"
    moving = [f for f in detected if f >= 32]
    assert max(np.diff(moving)) <= 4, f"gaps above the densest stride: {moving}"


def test_a_face_appearing_is_found_to_the_densest_stride() -> None:
    truth = [no_face()] * 21 + [FACE] * 27
    plan = _run(truth, stride_min=2, stride_max=16)

    detected = sorted(plan.detected)
    before = max(f for f in detected if f < 21)
    after = min(f for f in detected if f >= 21)
    assert after - before <= 2


def test_the_settled_keyframe_waits_for_pending_detections_and_never_moves_back() -> None:
    plan = KeyframePlan(4, 16, 0.9)
    assert plan.grid(40, complete=False) == [0, 16, 32]
    assert plan.settled() == -1
    plan.record(16, FACE)
    assert plan.settled() == -1, "frame 0 is not detected yet"
    plan.record(0, FACE)
    assert plan.settled() == 16
    moved = FACE + np.array([60, 0, 60, 0])
    assert plan.record(32, moved) == [24], "disagreeing neighbours ask for their midpoint"
    assert plan.settled() == 16, "the gap 16-32 is not final before 24 is detected"
    plan.record(24, moved)
    assert plan.settled() == 16
    assert 20 in plan.requested
    plan.record(20, moved)
    assert plan.settled() == 32


def test_detections_agree_only_with_the_same_face_or_none() -> None:
    assert agree(FACE, FACE + 1, 0.9)
    assert not agree(FACE, FACE + np.array([50, 0, 50, 0]), 0.9)
    assert not agree(FACE, no_face(), 0.9)
    assert agree(no_face(), no_face(), 0.9)


OTHER = FACE + np.array([300.0, 0, 300.0, 0])


def test_face_sets_agree_only_when_no_face_moved_appeared_or_vanished() -> None:
    both = np.array([FACE, OTHER])
    assert faces_agree(both, both[::-1] + 1, 0.9), "the order does not matter"
    assert not faces_agree(both, np.array([FACE]), 0.9), "one vanished"
    assert not faces_agree(both, np.array([FACE, OTHER + np.array([50, 0, 50, 0])]), 0.9), (
        "one moved"
    )
    assert faces_agree(np.zeros((0, 4)), np.zeros((0, 4)), 0.9)


def test_another_face_vanishing_is_found_to_the_densest_stride() -> None:
    """The tracked face stays put; a second face, one a job may choose, leaves at 21."""
    plan = KeyframePlan(2, 16, agree_iou=0.9)
    queue = plan.grid(48, complete=True)
    while queue:
        frame = queue.pop(0)
        faces = np.array([FACE, OTHER] if frame < 21 else [FACE])
        queue += plan.record(frame, FACE, faces)
    detected = sorted(plan.detected)
    before = max(f for f in detected if f < 21)
    after = min(f for f in detected if f >= 21)
    assert after - before <= 2, detected
    assert plan.settled() == 47
