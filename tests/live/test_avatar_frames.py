"""The decoded avatar pictures live sessions share: the budget, sharing, freeing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.live.avatar_frames import FrameCache, FramesClosed
from orchestrator.pipeline.avatar_cache import Avatar, load_avatar


@pytest.fixture
def avatar(avatar_cache: Path) -> Avatar:
    loaded = load_avatar(avatar_cache)
    assert loaded is not None
    return loaded


def _frame_bytes(avatar: Avatar) -> int:
    return avatar.width * avatar.height * 3


def test_a_frame_read_once_is_shared_by_every_session_of_the_avatar(avatar: Avatar) -> None:
    cache = FrameCache(64 * _frame_bytes(avatar))
    first, second = cache.open(avatar), cache.open(avatar)
    assert first.cached(3) is None
    picture = first.read(3)
    with avatar.open_frames() as store:
        assert np.array_equal(picture, store.read(3))
    assert second.cached(3) is picture  # the other session takes it without a read
    assert second.read(3) is picture
    assert cache.used_bytes == picture.nbytes
    with pytest.raises(ValueError, match="read-only"):
        picture[0, 0, 0] = 1  # shared: no session may draw on it
    first.close()
    assert cache.used_bytes == picture.nbytes  # the second session still plays it
    second.close()
    assert cache.used_bytes == 0


def test_frames_past_the_budget_are_read_each_time_and_the_cache_keeps_its_first(
    avatar: Avatar,
) -> None:
    cache = FrameCache(2 * _frame_bytes(avatar))
    frames = cache.open(avatar)
    for index in range(4):
        frames.read(index)
    assert [frames.cached(i) is not None for i in range(4)] == [True, True, False, False]
    assert cache.used_bytes == 2 * _frame_bytes(avatar)
    # Read again: not kept (the walk would need what an eviction threw out soonest).
    assert frames.read(3) is not frames.read(3)
    frames.close()


def test_a_cache_without_budget_keeps_nothing(avatar: Avatar) -> None:
    frames = FrameCache(0).open(avatar)
    frames.read(0)
    assert frames.cached(0) is None
    frames.close()


def test_a_read_after_close_is_refused_and_close_twice_is_harmless(avatar: Avatar) -> None:
    cache = FrameCache(8 * _frame_bytes(avatar))
    frames = cache.open(avatar)
    frames.close()
    frames.close()
    with pytest.raises(FramesClosed):
        frames.read(5)
    assert cache.used_bytes == 0
    # A session opened later starts anew.
    again = cache.open(avatar)
    again.read(5)
    assert again.cached(5) is not None
    again.close()
    assert cache.used_bytes == 0
