from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.pipeline import boxes
from orchestrator.pipeline.faces import (
    DEFAULT_CHOICE,
    FaceChoice,
    KeyframeFaces,
    NoSuchFace,
    chosen_track,
    follow,
    largest,
    left_to_right,
    pick,
)

LEFT = np.array([10.0, 20.0, 60.0, 80.0])
RIGHT = np.array([110.0, 22.0, 158.0, 80.0])


def _faces(frames: list[int], found: list[list[np.ndarray]]) -> KeyframeFaces:
    stacked = [np.array(f, np.float64).reshape(-1, 4) for f in found]
    return KeyframeFaces(frames, stacked, [np.ones(len(f)) for f in stacked])


@pytest.mark.parametrize(
    ("text", "choice"),
    [
        (None, FaceChoice()),
        ("", FaceChoice()),
        (" Largest ", FaceChoice()),
        ("0", FaceChoice(index=0)),
        ("3", FaceChoice(index=3)),
        ("120,45.5", FaceChoice(point=(120.0, 45.5))),
        (" 7 , 8 ", FaceChoice(point=(7.0, 8.0))),
    ],
)
def test_every_written_form_of_a_choice_is_read(text: str | None, choice: FaceChoice) -> None:
    assert FaceChoice.parse(text) == choice
    assert FaceChoice.parse(str(choice)) == choice, "the text form reads back the same"


@pytest.mark.parametrize("text", ["-1", "1.5", "a", "1,2,3", "x,1", "-3,4", "nan,1", "inf,2"])
def test_a_malformed_choice_says_which_forms_there_are(text: str) -> None:
    with pytest.raises(ValueError, match="largest"):
        FaceChoice.parse(text)


def test_the_default_choice_is_the_largest() -> None:
    assert DEFAULT_CHOICE.is_default and str(DEFAULT_CHOICE) == "largest"
    assert not FaceChoice(index=0).is_default


def test_largest_is_by_area_and_none_without_faces() -> None:
    found = np.array([LEFT, [0, 0, 100, 100], RIGHT])
    np.testing.assert_array_equal(largest(found), [0, 0, 100, 100])
    assert largest(np.zeros((0, 4))) is None


def test_faces_are_counted_left_to_right_whatever_their_score() -> None:
    ordered = left_to_right(np.array([RIGHT, LEFT]))  # the detector's order: best first
    np.testing.assert_array_equal(ordered, [LEFT, RIGHT])


def test_an_index_picks_that_face_and_one_too_many_lists_the_faces() -> None:
    found = np.array([LEFT, RIGHT])
    assert pick(found, FaceChoice(index=1)) == 1
    with pytest.raises(NoSuchFace, match=r"face 2 is not there: frame 4 has 2 faces \(0: .*1: "):
        pick(found, FaceChoice(index=2), frame=4)


def test_a_point_picks_the_face_holding_it_else_the_nearest_near_enough() -> None:
    found = np.array([LEFT, RIGHT])
    assert pick(found, FaceChoice(point=(130, 50))) == 1, "inside the right box"
    assert pick(found, FaceChoice(point=(30, 50))) == 0, "inside the left box"
    assert pick(found, FaceChoice(point=(70, 50))) == 0, "between them, nearer the left"
    assert pick(found, FaceChoice(point=(100, 50))) == 1, "between them, nearer the right"
    with pytest.raises(NoSuchFace, match=r"no face at or near \(150, 300\)"):
        pick(found, FaceChoice(point=(150, 300)))


def test_the_chosen_face_is_followed_by_overlap_and_lost_where_it_is_not() -> None:
    moved = RIGHT + np.array([4, 1, 4, 1])
    faces = _faces(
        [0, 4, 8, 12, 16],
        [
            [LEFT],  # before the start (frame 4): not followed
            [RIGHT, LEFT],
            [LEFT + 2, moved],  # both moved a little; the detector's order changed
            [LEFT],  # the right face is gone here
            [moved + np.array([2, 0, 2, 0]), LEFT],  # and back, overlapping where it was last seen
        ],
    )
    rows = follow(faces, 4, RIGHT)
    assert not boxes.has_face(rows[:1]).any(), "nothing before the start"
    np.testing.assert_array_equal(rows[1], RIGHT)
    np.testing.assert_array_equal(rows[2], moved)
    assert not boxes.has_face(rows[3:4]).any(), "lost: the left face does not overlap it"
    np.testing.assert_array_equal(rows[4], moved + np.array([2, 0, 2, 0]))


def test_chosen_track_starts_at_the_first_frame_with_faces_and_leaves_lost_frames_alone() -> None:
    faces = _faces(
        [0, 2, 4, 6, 8],
        [[], [LEFT, RIGHT], [LEFT, RIGHT], [LEFT], [RIGHT, LEFT]],
    )
    track = chosen_track(faces, FaceChoice(point=(140, 40)), 9, 200, 120)
    assert track.dtype == np.int32 and track.shape == (9, 4)
    with_face = boxes.has_face(track).tolist()
    # Frames 2-4 follow the right face; 5-7 neighbour the keyframe where it is lost.
    assert with_face == [False, False, True, True, True, False, False, False, True]
    assert (track[2:5, 0] >= 100).all(), "the right face, not the left one"
    left = chosen_track(faces, FaceChoice(index=0), 9, 200, 120)
    assert boxes.has_face(left[2:8]).all() and (left[2:8, 2] <= 70).all()


def test_a_choice_on_an_avatar_without_faces_names_none() -> None:
    with pytest.raises(NoSuchFace, match="no face"):
        chosen_track(_faces([0, 4], [[], []]), FaceChoice(index=0), 5, 64, 64)


def test_every_face_round_trips_through_the_cache_file(tmp_path: Path) -> None:
    faces = _faces([0, 3, 7], [[LEFT, RIGHT], [], [RIGHT]])
    faces.save(tmp_path / "faces.npz")
    back = KeyframeFaces.load(tmp_path / "faces.npz")
    assert back.frames == [0, 3, 7]
    assert [len(b) for b in back.boxes] == [2, 0, 1]
    np.testing.assert_allclose(back.boxes[0], [LEFT, RIGHT])
    assert [len(s) for s in back.scores] == [2, 0, 1]
    empty = KeyframeFaces([], [], [])
    empty.save(tmp_path / "empty.npz")
    assert KeyframeFaces.load(tmp_path / "empty.npz") == empty
