"""composite blends only what the model changed, over the lower face, with no seam."""

from __future__ import annotations

import cv2
import numpy as np
import skimage.data

from modelkit import talking
from orchestrator.pipeline.composite import composite_frame, feather_mask, lower_face_mask
from orchestrator.pipeline.infer import _to_pixels, face_stack

# The astronaut's face in skimage.data.astronaut() (512 x 512), padded below the chin the
# way the avatar stage pads S3FD's box.
ASTRONAUT_BOX = (172, 62, 262, 190)
FACE_SIZE = 96


def _astronaut() -> np.ndarray:
    return cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)


def _generated(frame: np.ndarray, box: tuple[int, int, int, int], energy: float) -> np.ndarray:
    """What the talking reference model returns for this crop at this loudness."""
    face = face_stack(frame, box, FACE_SIZE)[None]
    mel = np.full((1, 1, 80, 16), talking.MEL_FLOOR + energy * talking.MEL_SPAN, np.float32)
    return _to_pixels(talking.expected_prediction(mel, face))[0]


def edge_gradient(frame: np.ndarray, box: tuple[int, int, int, int], band: int = 3) -> float:
    """Mean absolute gradient across the box's border, in a band straddling it (the box
    must be at least `band` pixels inside the frame)."""
    x1, y1, x2, y2 = box
    height, width = frame.shape[:2]
    assert band <= min(x1, y1) and x2 + band <= width and y2 + band <= height
    image = frame.astype(np.float32)
    across_rows = np.abs(np.diff(image, axis=0))  # row r holds image[r + 1] - image[r]
    across_cols = np.abs(np.diff(image, axis=1))
    steps = [
        across_rows[y1 - band : y1 + band, x1:x2],
        across_rows[y2 - band : y2 + band, x1:x2],
        across_cols[y1:y2, x1 - band : x1 + band],
        across_cols[y1:y2, x2 - band : x2 + band],
    ]
    return float(np.mean([s.mean() for s in steps]))


def test_pixels_outside_the_box_are_untouched() -> None:
    frame = _astronaut()
    out = composite_frame(frame, ASTRONAUT_BOX, _generated(frame, ASTRONAUT_BOX, 1.0))
    x1, y1, x2, y2 = ASTRONAUT_BOX
    outside = np.ones(frame.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    np.testing.assert_array_equal(out[outside], frame[outside])
    assert (out != frame).any(), "a loud window changes the face"
    assert frame.flags.writeable and not np.shares_memory(out, frame)


def test_a_face_the_model_left_alone_comes_back_bit_for_bit() -> None:
    frame = _astronaut()
    out = composite_frame(frame, ASTRONAUT_BOX, _generated(frame, ASTRONAUT_BOX, 0.0))
    np.testing.assert_array_equal(out, frame)
    assert not np.shares_memory(out, frame)


def test_an_open_mouth_is_darker_and_leaves_no_step_at_the_box_edge() -> None:
    frame = _astronaut()
    out = composite_frame(frame, ASTRONAUT_BOX, _generated(frame, ASTRONAUT_BOX, 1.0))
    x1, y1, x2, y2 = ASTRONAUT_BOX
    line = y1 + round(talking.MOUTH_LINE * (y2 - y1))
    gap = round(talking.JAW_DROP * (y2 - y1))
    mouth = (slice(line, line + gap), slice(x1 + (x2 - x1) // 3, x2 - (x2 - x1) // 3))
    assert out[mouth].mean() < 0.6 * frame[mouth].mean(), "the opening is dark"
    upper_face = (slice(y1, line - 2), slice(x1, x2))
    np.testing.assert_array_equal(out[upper_face], frame[upper_face])
    assert edge_gradient(out, ASTRONAUT_BOX) <= 1.02 * edge_gradient(frame, ASTRONAUT_BOX) + 0.05


def test_feather_mask_is_zero_at_the_border_and_one_inside() -> None:
    mask = feather_mask(50, 40)[..., 0]
    assert mask[0].max() == 0 and mask[:, 0].max() == 0 and mask[-1].max() == 0
    assert mask[25, 20] == 1.0


def test_lower_face_mask_covers_the_mouth_and_jaw_and_not_the_eyes() -> None:
    height, width = 120, 90
    mask = lower_face_mask(height, width)[..., 0]
    assert mask[0].max() == 0 and mask[-1].max() == 0
    assert mask[:, 0].max() == 0 and mask[:, -1].max() == 0
    mouth_row = round(talking.MOUTH_LINE * height)
    jaw = slice(round(0.3 * width), round(0.7 * width))
    assert mask[mouth_row : round(0.85 * height), jaw].min() == 1.0
    assert mask[: round(0.35 * height)].max() == 0.0, "the eyes are never blended"


def test_face_stack_masks_the_lower_half_of_the_target_only() -> None:
    frame = np.full((40, 40, 3), 255, np.uint8)
    stack = face_stack(frame, (0, 0, 40, 40), 16)
    assert stack.shape == (6, 16, 16) and stack.dtype == np.float32
    assert stack[:3, 8:].max() == 0.0 and stack[:3, :8].min() == 1.0
    assert stack[3:].min() == 1.0
