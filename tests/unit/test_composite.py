"""composite blends the generated lower face with no seam: in delta mode only what the
model changed, in replace mode the generated face itself."""

from __future__ import annotations

import cv2
import numpy as np
import skimage.data

from modelkit import reference, talking
from orchestrator.pipeline.composite import (
    CompositeMode,
    composite_frame,
    feather_mask,
    lower_face_mask,
)
from orchestrator.pipeline.infer import face_crop, face_stack, pred_to_crops

# The astronaut's face in skimage.data.astronaut() (512 x 512), padded below the chin the
# way the avatar stage pads S3FD's box.
ASTRONAUT_BOX = (172, 62, 262, 190)
FACE_SIZE = 96


def _astronaut() -> np.ndarray:
    photo: np.ndarray = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    return photo


def _generated(frame: np.ndarray, box: tuple[int, int, int, int], energy: float) -> np.ndarray:
    """What the talking reference model returns for this crop at this loudness."""
    face = face_stack(frame, box, FACE_SIZE)[None]
    mel = np.full((1, 1, 80, 16), reference.MEL_FLOOR + energy * reference.MEL_SPAN, np.float32)
    pixels: np.ndarray = pred_to_crops(talking.expected_prediction(mel, face))[0]
    return pixels


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
    face = _generated(frame, ASTRONAUT_BOX, 0.0)
    out = composite_frame(frame, ASTRONAUT_BOX, face, mode=CompositeMode.DELTA)
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


def _open_mouth(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """`frame` with a wide-open mouth drawn in: a dark ellipse across the lower face."""
    x1, y1, x2, y2 = box
    centre = ((x1 + x2) // 2, y1 + round(0.74 * (y2 - y1)))
    axes = (round(0.2 * (x2 - x1)), round(0.1 * (y2 - y1)))
    opened = frame.copy()
    cv2.ellipse(opened, centre, axes, 0, 0, 360, (20, 15, 40), thickness=-1)
    return opened


def _inside_mask(box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices (in the frame) where the lower-face mask is fully on."""
    x1, y1, x2, y2 = box
    rows, cols = np.nonzero(lower_face_mask(y2 - y1, x2 - x1)[..., 0] == 1.0)
    return rows + y1, cols + x1


def test_replace_leaves_no_trace_of_the_avatars_open_mouth() -> None:
    closed = _astronaut()
    opened = _open_mouth(closed, ASTRONAUT_BOX)
    # A generator that draws the mouth closed: its output is the closed face's crop.
    face = face_crop(closed, ASTRONAUT_BOX, FACE_SIZE)
    out = composite_frame(opened, ASTRONAUT_BOX, face, mode=CompositeMode.REPLACE)
    x1, y1, x2, y2 = ASTRONAUT_BOX
    pasted = cv2.resize(face, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
    rows, cols = _inside_mask(ASTRONAUT_BOX)
    difference = np.abs(out[rows, cols].astype(int) - pasted[rows - y1, cols - x1].astype(int))
    assert difference.max() <= 1, "inside the mask the frame is the generated face"
    mouth = (opened != closed).any(axis=2)
    assert out[mouth].mean() > 0.9 * closed[mouth].mean(), "the dark opening is gone"
    outside = np.ones(closed.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    np.testing.assert_array_equal(out[outside], opened[outside])
    assert edge_gradient(out, ASTRONAUT_BOX) <= 1.02 * edge_gradient(opened, ASTRONAUT_BOX) + 0.05


def test_delta_would_keep_the_old_mouths_edges_that_replace_removes() -> None:
    # Why real generators need replace: the change measured at 96 px, added back at the
    # box's size, leaves the open mouth's sharp outline in the frame.
    closed = _astronaut()
    opened = _open_mouth(closed, ASTRONAUT_BOX)
    face = face_crop(closed, ASTRONAUT_BOX, FACE_SIZE)
    rows, cols = _inside_mask(ASTRONAUT_BOX)
    errors = {}
    for mode in CompositeMode:
        out = composite_frame(opened, ASTRONAUT_BOX, face, mode=mode)
        errors[mode] = np.abs(out[rows, cols].astype(int) - closed[rows, cols].astype(int)).max()
    assert errors[CompositeMode.DELTA] > 2 * errors[CompositeMode.REPLACE]


def test_replace_pastes_a_face_of_any_size_such_as_a_restored_one() -> None:
    frame = _astronaut()
    face = np.full((256, 256, 3), 200, np.uint8)
    out = composite_frame(frame, ASTRONAUT_BOX, face, mode=CompositeMode.REPLACE)
    rows, cols = _inside_mask(ASTRONAUT_BOX)
    assert (out[rows, cols] == 200).all()


def test_delta_takes_the_given_crop_at_the_faces_own_size() -> None:
    # A restored face (restorer size, not S) in delta mode: the change is measured against
    # the crop at that size, so a restorer that changes nothing changes nothing.
    frame = _astronaut()
    face = face_crop(frame, ASTRONAUT_BOX, 128)
    given = face_crop(frame, ASTRONAUT_BOX, FACE_SIZE)
    out = composite_frame(frame, ASTRONAUT_BOX, face, given, mode=CompositeMode.DELTA)
    np.testing.assert_array_equal(out, frame)
