from __future__ import annotations

from fractions import Fraction

import pytest

from orchestrator.pipeline.drive import (
    output_fps,
    output_frame_count,
    pingpong,
    source_frame,
)


@pytest.mark.parametrize(
    ("samples", "fps", "frames"),
    [
        (160_000, Fraction(25), 250),  # exactly 10 s: no extra frame
        (160_001, Fraction(25), 251),
        (16_000, Fraction(30000, 1001), 30),  # 29.97 fps: ceil(29.97)
        (1, Fraction(25), 1),
    ],
)
def test_output_frame_count_is_ceil_of_seconds_times_fps(
    samples: int, fps: Fraction, frames: int
) -> None:
    assert output_frame_count(samples, fps) == frames


def test_pingpong_walks_forward_then_backward() -> None:
    assert [pingpong(i, 4) for i in range(10)] == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]


def test_pingpong_of_a_single_frame_avatar_is_that_frame() -> None:
    assert {pingpong(i, 1) for i in range(5)} == {0}


def test_pingpong_cuts_when_audio_is_shorter() -> None:
    assert [pingpong(i, 100) for i in range(5)] == [0, 1, 2, 3, 4]


def test_output_rate_is_the_avatars_unless_one_is_set() -> None:
    assert output_fps(29.97002997, None) == Fraction(30000, 1001)
    assert output_fps(25.0, 30.0) == 30


def test_the_walk_waits_for_frames_being_prepared_and_turns_back_only_at_the_end() -> None:
    assert source_frame(3, ready=10, frame_count=None) == 3
    assert source_frame(10, ready=10, frame_count=None) is None, "not prepared yet: wait"
    assert source_frame(12, ready=10, frame_count=None) is None, "never turns back early"
    assert source_frame(12, ready=10, frame_count=10) == pingpong(12, 10) == 6
