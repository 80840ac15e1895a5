"""The visible watermark: rendered once per frame size, blended into a corner only."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from orchestrator.errors import PipelineError
from orchestrator.pipeline.encode import Overlay, Watermark, apply_watermark, watermark_overlay

GREY = 100


def _frame(height: int = 120, width: int = 160) -> np.ndarray:
    return np.full((height, width, 3), GREY, np.uint8)


def _square_overlay(alpha: float) -> Overlay:
    return Overlay(
        top=1,
        left=2,
        bgr=np.full((2, 3, 3), 255, np.float32),
        alpha=np.full((2, 3, 1), alpha, np.float32),
    )


def test_an_opaque_overlay_replaces_its_pixels_and_nothing_else() -> None:
    frame = _frame()

    marked = apply_watermark(frame, _square_overlay(1.0))

    assert (marked[1:3, 2:5] == 255).all()
    untouched = np.ones(frame.shape[:2], bool)
    untouched[1:3, 2:5] = False
    assert (marked[untouched] == GREY).all()
    assert (frame == GREY).all(), "the input frame is not modified"


def test_a_half_transparent_overlay_blends_halfway() -> None:
    marked = apply_watermark(_frame(), _square_overlay(0.5))
    assert (marked[1:3, 2:5] == round((GREY + 255) / 2)).all()


def test_an_overlay_past_the_edge_is_clipped_to_the_frame() -> None:
    overlay = Overlay(
        top=118, left=158, bgr=np.zeros((5, 5, 3), np.float32), alpha=np.ones((5, 5, 1), np.float32)
    )
    marked = apply_watermark(_frame(), overlay)
    assert (marked[118:, 158:] == 0).all()
    assert marked.shape == (120, 160, 3)


@pytest.mark.parametrize(
    ("corner", "rows", "cols"),
    [
        ("bottom-right", slice(60, None), slice(80, None)),
        ("top-left", slice(None, 60), slice(None, 80)),
    ],
)
def test_text_is_drawn_visibly_in_its_corner_only(corner: str, rows: slice, cols: slice) -> None:
    frame = _frame()
    overlay = watermark_overlay(Watermark("AI generated", corner=corner), 160, 120)

    changed = np.abs(apply_watermark(frame, overlay).astype(int) - frame).sum(axis=2) > 0

    assert changed[rows, cols].sum() > 50, "the text is visible"
    elsewhere = changed.copy()
    elsewhere[rows, cols] = False
    assert not elsewhere.any(), "nothing outside the corner changes"


def test_an_image_keeps_its_transparency_and_is_shrunk_to_a_corner(tmp_path: Path) -> None:
    logo = np.zeros((200, 200, 4), np.uint8)
    logo[:100, :, :3] = (0, 0, 255)  # red, opaque top half
    logo[:100, :, 3] = 255  # the bottom half stays transparent
    path = tmp_path / "logo.png"
    cv2.imwrite(str(path), logo)

    overlay = watermark_overlay(Watermark("unused", image=path), 160, 120)
    marked = apply_watermark(_frame(), overlay)

    rows, cols = overlay.alpha.shape[:2]
    assert rows <= 120 * 0.25 and cols <= 160 * 0.25
    top, left = overlay.top, overlay.left
    assert top + rows <= 120 and left + cols <= 160 and top >= 60 and left >= 80
    assert tuple(marked[top + 1, left + 1]) == (0, 0, 255)
    assert (marked[top + rows - 1, left : left + cols] == GREY).all()


def test_an_unreadable_image_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "not-an-image.png"
    path.write_bytes(b"plain text")
    with pytest.raises(PipelineError, match="DH_WATERMARK_IMAGE"):
        watermark_overlay(Watermark("unused", image=path), 160, 120)
