from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.errors import BadInput, PipelineError
from orchestrator.pipeline.frame_store import FRAMES_FILE, FrameStore, FrameWriter
from tests.pipeline.frames import psnr

SHAPE = (48, 64, 3)


def _frames(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, SHAPE[0] * SHAPE[1] * 3).reshape(SHAPE)
    return [
        np.clip(base + rng.normal(0, 4, SHAPE) + 20 * i, 0, 255).astype(np.uint8)
        for i in range(count)
    ]


def _write(directory: Path, codec: str, frames: list[np.ndarray]) -> None:
    writer = FrameWriter(directory, codec, 95)  # type: ignore[arg-type]
    for frame in frames:
        writer.append(frame)
    writer.close()


def test_raw_frames_come_back_exactly_in_any_order(tmp_path: Path) -> None:
    frames = _frames(5)
    _write(tmp_path, "raw", frames)
    with FrameStore(tmp_path, "raw", SHAPE[1], SHAPE[0]) as store:
        for index in (4, 0, 3, 3, 1):
            np.testing.assert_array_equal(store.read(index), frames[index])


def test_jpeg_frames_are_close_and_much_smaller(tmp_path: Path) -> None:
    frames = _frames(5)
    _write(tmp_path, "jpeg", frames)
    with FrameStore(tmp_path, "jpeg", SHAPE[1], SHAPE[0]) as store:
        assert all(psnr(store.read(i), frames[i]) > 35 for i in range(5))
    assert (tmp_path / FRAMES_FILE).stat().st_size < 5 * frames[0].nbytes / 2


def test_a_truncated_store_is_a_clear_error(tmp_path: Path) -> None:
    _write(tmp_path, "raw", _frames(3))
    with (tmp_path / FRAMES_FILE).open("r+b") as f:
        f.truncate(SHAPE[0] * SHAPE[1] * 3 * 2 + 10)
    with FrameStore(tmp_path, "raw", SHAPE[1], SHAPE[0]) as store:
        store.read(1)
        with pytest.raises(BadInput, match="truncated at frame 2"):
            store.read(2)


def test_a_reader_of_a_growing_store_sees_frames_written_after_it_opened(tmp_path: Path) -> None:
    frames = _frames(3)
    writer = FrameWriter(tmp_path, "raw", 95)
    reader = writer.reader(SHAPE[1], SHAPE[0])
    writer.append(frames[0])
    np.testing.assert_array_equal(reader.read(0), frames[0])
    with pytest.raises(PipelineError, match="not in the avatar's frame store yet"):
        reader.read(1)
    writer.append(frames[1])
    writer.append(frames[2])
    writer.close()
    (tmp_path / "moved").mkdir()
    (tmp_path / FRAMES_FILE).rename(tmp_path / "moved" / FRAMES_FILE)
    # Still readable once moved: the cache renames the folder under a reader.
    np.testing.assert_array_equal(reader.read(2), frames[2])
    reader.close()
