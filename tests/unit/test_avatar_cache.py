"""The prepared avatar on disk: written, installed whole, loaded back, stale ones replaced."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from orchestrator.files import Partial, is_partial
from orchestrator.pipeline import avatar_cache
from orchestrator.pipeline.avatar_cache import META_FILE, STORE_VERSION, load_avatar
from orchestrator.pipeline.faces import KeyframeFaces
from orchestrator.pipeline.frame_store import FrameWriter

AVATAR_ID = "0123456789abcdef0123456789abcdef"
SHAPE = (24, 32, 3)


def _write_scratch(avatars: Path, frames: int = 3, fps: float = 25.0) -> Partial:
    scratch = avatar_cache.new_scratch(avatars / AVATAR_ID)
    writer = FrameWriter(scratch.path, "raw", 95)
    for i in range(frames):
        writer.append(np.full(SHAPE, i * 10, np.uint8))
    writer.close()
    boxes = np.array([[2, 3, 20, 21]] * frames, np.int32)
    avatar_cache.write_avatar(
        scratch.path,
        avatar_id=AVATAR_ID,
        source_name="talk.mp4",
        width=SHAPE[1],
        height=SHAPE[0],
        fps=fps,
        frame_count=frames,
        detected_frames=2,
        frame_codec="raw",
        boxes=boxes,
        faces=KeyframeFaces(
            [0, 2],
            [np.array([[20.0, 3, 30, 21], [2, 3, 18, 20]]), np.zeros((0, 4))],
            [np.array([0.99, 0.95]), np.zeros(0)],
        ),
    )
    return scratch


def test_an_installed_avatar_loads_back_with_its_frames(tmp_path: Path) -> None:
    scratch = _write_scratch(tmp_path)
    assert load_avatar(scratch.target) is None, "nothing is in place before the install"
    avatar_cache.install(scratch)

    avatar = load_avatar(tmp_path / AVATAR_ID)
    assert avatar is not None
    assert (avatar.avatar_id, avatar.frame_count, avatar.fps) == (AVATAR_ID, 3, 25.0)
    assert avatar.frames_with_face == 3 and avatar.detected_frames == 2
    assert avatar.first_faces() == [
        {"index": 0, "frame": 0, "box": [2.0, 3.0, 18.0, 20.0]},
        {"index": 1, "frame": 0, "box": [20.0, 3.0, 30.0, 21.0]},
    ], "every face kept, listed left to right"
    with avatar.open_frames() as frames:
        assert int(frames.read(2)[0, 0, 0]) == 20
    assert [p.name for p in tmp_path.iterdir()] == [AVATAR_ID], "no scratch is left"
    assert avatar_cache.is_complete(tmp_path / AVATAR_ID)


def test_a_cache_of_an_older_format_is_replaced(tmp_path: Path) -> None:
    old = tmp_path / AVATAR_ID
    old.mkdir()
    (old / META_FILE).write_text(json.dumps({"store_version": STORE_VERSION - 1}))
    assert load_avatar(old) is None

    avatar_cache.install(_write_scratch(tmp_path))
    assert load_avatar(old) is not None
    assert [p.name for p in tmp_path.iterdir()] == [AVATAR_ID]


def test_a_complete_cache_installed_meanwhile_is_kept(tmp_path: Path) -> None:
    avatar_cache.install(_write_scratch(tmp_path, fps=25.0))
    avatar_cache.install(_write_scratch(tmp_path, fps=30.0))  # another job's, same video
    avatar = load_avatar(tmp_path / AVATAR_ID)
    assert avatar is not None and avatar.fps == 25.0, "the first one stays"
    assert [p.name for p in tmp_path.iterdir()] == [AVATAR_ID]


def test_leftover_partials_are_removed_and_caches_kept(tmp_path: Path) -> None:
    avatar_cache.install(_write_scratch(tmp_path))
    leftover = _write_scratch(tmp_path)  # as a killed preparation leaves it
    assert avatar_cache.remove_partials(tmp_path) == [leftover.path.name]
    assert [p.name for p in tmp_path.iterdir()] == [AVATAR_ID]
    assert avatar_cache.remove_partials(tmp_path / "absent") == []


def test_the_cache_files_are_listed_with_their_sizes(tmp_path: Path) -> None:
    avatar_cache.install(_write_scratch(tmp_path))
    files = avatar_cache.cache_files(tmp_path / AVATAR_ID)
    assert sorted(files) == ["boxes.npy", "faces.npz", "frames.bin", "frames.idx.npy", "meta.json"]
    assert files["frames.bin"] == 3 * SHAPE[0] * SHAPE[1] * 3


def test_renamed_copies_of_a_video_share_one_id(tmp_path: Path) -> None:
    video = tmp_path / "talk.mp4"
    video.write_bytes(b"\x00video bytes" * 1000)
    copy = shutil.copy(video, tmp_path / "other-name.mov")
    assert avatar_cache.content_id(video) == avatar_cache.content_id(Path(copy))
    assert len(avatar_cache.content_id(video)) == avatar_cache.CONTENT_ID_HEX
    assert not is_partial(video)
