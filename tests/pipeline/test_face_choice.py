"""Choosing the face that talks, in an avatar with two faces side by side, end to end
against the real Triton with the reference model (it darkens the mouth with loud audio).

Every render here goes through the same encoder, so a render of the same avatar in
silence (the reference model then changes nothing) is the yardstick: a face the job did
not choose, and a frame where the chosen face is lost, come out as they do there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from orchestrator.errors import BadInput
from orchestrator.pipeline import boxes as face_boxes
from orchestrator.pipeline.faces import FaceChoice, chosen_track
from orchestrator.pipeline.mel import SAMPLE_RATE
from orchestrator.pipeline.runner import Engine, JobResult
from synthmedia.audio import write_audio
from synthmedia.two_faces import write_two_face_video
from tests.pipeline.conftest import AVATAR_FPS
from tests.pipeline.frames import decode_frames, region_mean
from tests.pipeline.test_generate import MOUTH_COLS, MOUTH_ROWS

HALF = (192, 192)
SECONDS = 1.2  # the audio as long as the avatar: output frame i shows avatar frame i
FRAMES = round(SECONDS * AVATAR_FPS)
RIGHT_HIDDEN = range(12, 18)
# Loud, even noise: the reference model opens the mouth in every frame it drives.
LOUDNESS = 0.5
# Mean absolute difference (0-255) from the silent render below which a region is
# untouched: the encoder's noise, as one render's changes nudge its neighbouring blocks.
UNTOUCHED = 1.0
# A driven mouth is darker than in silence: below this ratio.
DARKENED = 0.9


@dataclass(frozen=True)
class Render:
    result: JobResult
    frames: list[np.ndarray]

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.result.output.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def two_faces(media: Path) -> Path:
    path = media / "two_faces.mp4"
    write_two_face_video(
        path, seconds=SECONDS, fps=AVATAR_FPS, half_size=HALF, right_hidden=RIGHT_HIDDEN
    )
    return path


@pytest.fixture(scope="module")
def loud(media: Path) -> Path:
    path = media / "loud.wav"
    noise = np.random.default_rng(16).uniform(-LOUDNESS, LOUDNESS, round(SECONDS * SAMPLE_RATE))
    write_audio(path, noise.astype(np.float32), SAMPLE_RATE)
    return path


@pytest.fixture(scope="module")
def silence(media: Path) -> Path:
    path = media / "silence_1s2.wav"
    write_audio(path, np.zeros(round(SECONDS * SAMPLE_RATE), np.float32), SAMPLE_RATE)
    return path


async def _render(engine: Engine, avatar: Path, audio: Path, out: Path, face: str) -> Render:
    result = await engine.generate(avatar, audio, out, face=FaceChoice.parse(face))
    return Render(result, decode_frames(result.output))


@pytest.fixture(scope="module")
async def silent(engine: Engine, two_faces: Path, silence: Path, media: Path) -> Render:
    return await _render(engine, two_faces, silence, media / "silent_two.mp4", "largest")


@pytest.fixture(scope="module")
async def right(engine: Engine, two_faces: Path, loud: Path, media: Path) -> Render:
    return await _render(engine, two_faces, loud, media / "right.mp4", "1")


@pytest.fixture(scope="module")
async def right_by_point(engine: Engine, two_faces: Path, loud: Path, media: Path) -> Render:
    return await _render(engine, two_faces, loud, media / "right_by_point.mp4", "290,80")


@pytest.fixture(scope="module")
async def left_by_point(engine: Engine, two_faces: Path, loud: Path, media: Path) -> Render:
    # Left of the left face's box (it starts at x ~60), near enough to name it.
    return await _render(engine, two_faces, loud, media / "left_by_point.mp4", "45,70")


def _track(render: Render, face: str) -> np.ndarray:
    avatar = render.result.avatar
    choice = FaceChoice.parse(face)
    return chosen_track(avatar.faces, choice, avatar.frame_count, avatar.width, avatar.height)


def _mouth_ratio(render: Render, silent: Render, index: int, box: np.ndarray) -> float:
    """The mouth opening's mean brightness over the same place in the silent render."""
    loud = region_mean(render.frames[index], box, MOUTH_ROWS, MOUTH_COLS)
    return loud / region_mean(silent.frames[index], box, MOUTH_ROWS, MOUTH_COLS)


def _difference(a: np.ndarray, b: np.ndarray, box: np.ndarray | None = None) -> float:
    """Mean absolute difference, inside `box` or over the whole frame."""
    x1, y1, x2, y2 = (0, 0, a.shape[1], a.shape[0]) if box is None else (int(v) for v in box)
    return float(np.abs(a[y1:y2, x1:x2].astype(np.int16) - b[y1:y2, x1:x2]).mean())


def _assert_only_chosen_mouth_opens(
    render: Render, silent: Render, chosen: np.ndarray, other: np.ndarray
) -> None:
    tracked = [i for i in range(FRAMES) if face_boxes.has_face(chosen[i : i + 1])[0]]
    assert len(tracked) >= FRAMES // 2
    for i in tracked:
        assert _mouth_ratio(render, silent, i, chosen[i]) < DARKENED, f"closed mouth in frame {i}"
        if not face_boxes.has_face(other[i : i + 1])[0]:
            continue  # the other face is hidden here
        assert _mouth_ratio(render, silent, i, other[i]) > 0.98, f"other mouth moved in frame {i}"
        assert _difference(render.frames[i], silent.frames[i], other[i]) < UNTOUCHED, (
            f"the other face changed in frame {i}"
        )


def test_both_faces_are_found_and_listed_left_to_right(right: Render) -> None:
    faces = right.result.avatar.first_faces()
    assert [face["index"] for face in faces] == [0, 1]
    assert all(face["frame"] == 0 for face in faces)
    left, right_face = (face["box"] for face in faces)
    assert left[2] < HALF[0] <= right_face[0], "one face in each half"


def test_choosing_the_right_face_opens_only_its_mouth(right: Render, silent: Render) -> None:
    _assert_only_chosen_mouth_opens(right, silent, _track(right, "1"), _track(right, "0"))


def test_a_frame_where_the_chosen_face_is_lost_is_left_untouched(
    right: Render, silent: Render
) -> None:
    track = _track(right, "1")
    lost = [i for i in range(FRAMES) if not face_boxes.has_face(track[i : i + 1])[0]]
    assert set(RIGHT_HIDDEN) <= set(lost), "hidden frames have no face to animate"
    assert right.result.frames_without_face == len(lost)
    for i in lost:
        assert _difference(right.frames[i], silent.frames[i]) < UNTOUCHED, f"frame {i} changed"
    assert silent.result.frames_without_face == 0, "the largest face is always there"


def test_a_point_names_the_face_it_is_in(right: Render, right_by_point: Render) -> None:
    assert right_by_point.digest == right.digest, "the same face as index 1, the same video"


def test_a_point_near_a_face_names_it(left_by_point: Render, silent: Render) -> None:
    track = _track(left_by_point, "0")
    _assert_only_chosen_mouth_opens(left_by_point, silent, track, _track(left_by_point, "1"))
    assert left_by_point.result.frames_without_face == 0


@pytest.mark.parametrize(
    ("face", "reason"),
    [("2", "face 2 is not there"), ("192,191", r"no face at or near \(192, 191\)")],
)
async def test_a_choice_naming_no_face_is_bad_input_listing_the_faces(
    engine: Engine,
    two_faces: Path,
    silence: Path,
    media: Path,
    right: Render,  # the avatar is prepared: the choice is refused before rendering
    face: str,
    reason: str,
) -> None:
    out = media / "never.mp4"
    with pytest.raises(BadInput, match=reason) as refused:
        await engine.generate(two_faces, silence, out, face=FaceChoice.parse(face))
    assert refused.value.stage == "avatar"
    assert "frame 0 has 2 faces (0: (60, 37)-(128, 120), 1: (" in refused.value.message
    assert not out.exists()
