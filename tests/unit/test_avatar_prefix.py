"""The published prefix of an avatar being prepared: waiters wake on publication, never
by polling, and a failed preparation fails every waiter with its own error."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from orchestrator.errors import TritonUnavailable
from orchestrator.pipeline.avatar_prefix import AvatarPrefix
from orchestrator.pipeline.drive import source_frame
from orchestrator.pipeline.frame_store import FrameStore

# Generous for a loaded 2-core machine; the waits below end on events, not on time.
WAIT_S = 10.0


def _prefix() -> AvatarPrefix:
    def no_store() -> FrameStore:
        raise AssertionError("no frames are read here")

    return AvatarPrefix("id", 64, 48, 25.0, no_store)


async def _frame_for(prefix: AvatarPrefix, index: int) -> int:
    while (frame := source_frame(index, prefix.ready, prefix.frame_count)) is None:
        await prefix.changed()
    return frame


async def test_a_waiter_gets_its_frame_once_its_box_is_published() -> None:
    prefix = _prefix()
    waiter = asyncio.create_task(_frame_for(prefix, 2))
    prefix.publish(5, np.array([[1, 2, 30, 40]] * 2, np.int32))
    await asyncio.sleep(0)  # let the waiter look at the first publication
    assert not waiter.done(), "frame 2 is not ready after two rows"
    prefix.publish(6, np.array([[1, 2, 30, 40], [-1, -1, -1, -1]], np.int32))

    assert await asyncio.wait_for(waiter, WAIT_S) == 2
    assert prefix.box(2) == (1, 2, 30, 40) and prefix.box(3) is None
    assert prefix.frames_decoded == 6


async def test_a_failed_preparation_fails_every_waiter_with_its_cause() -> None:
    prefix = _prefix()
    waiters = [asyncio.create_task(_frame_for(prefix, i)) for i in (0, 7)]
    await asyncio.sleep(0)
    cause = TritonUnavailable("face_detector", "unavailable", stage="avatar")
    prefix.fail(cause)

    for waiter in waiters:
        with pytest.raises(TritonUnavailable) as caught:
            await asyncio.wait_for(waiter, WAIT_S)
        assert caught.value is cause
    with pytest.raises(TritonUnavailable):
        await prefix.result()


async def test_listeners_hear_every_publication_until_they_stop() -> None:
    prefix = _prefix()
    heard: list[int] = []
    stop = prefix.listen(lambda p: heard.append(p.frames_decoded))
    prefix.publish(1, np.zeros((0, 4), np.int32))
    stop()
    prefix.publish(2, np.zeros((0, 4), np.int32))

    assert heard == [1]
