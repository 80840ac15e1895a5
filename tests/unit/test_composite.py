from __future__ import annotations

import numpy as np

from orchestrator.pipeline.composite import composite_frame, feather_mask
from orchestrator.pipeline.infer import face_stack


def test_pixels_outside_the_box_are_untouched() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (60, 80, 3), np.uint8)
    face = np.zeros((96, 96, 3), np.uint8)
    box = (10, 15, 50, 55)
    out = composite_frame(frame, box, face)
    outside = np.ones(frame.shape[:2], bool)
    outside[15:55, 10:50] = False
    np.testing.assert_array_equal(out[outside], frame[outside])
    assert out[35, 30].max() < 5, "the centre of the box is the generated face"
    assert frame.flags.writeable and not np.shares_memory(out, frame)


def test_feather_mask_is_zero_at_the_border_and_one_inside() -> None:
    mask = feather_mask(50, 40)[..., 0]
    assert mask[0].max() == 0 and mask[:, 0].max() == 0 and mask[-1].max() == 0
    assert mask[25, 20] == 1.0


def test_face_stack_masks_the_lower_half_of_the_target_only() -> None:
    frame = np.full((40, 40, 3), 255, np.uint8)
    stack = face_stack(frame, (0, 0, 40, 40), 16)
    assert stack.shape == (6, 16, 16) and stack.dtype == np.float32
    assert stack[:3, 8:].max() == 0.0 and stack[:3, :8].min() == 1.0
    assert stack[3:].min() == 1.0
