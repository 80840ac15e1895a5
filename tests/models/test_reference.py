"""The analytic lipsync models compute exactly their documented formulas.

The talking model (modelkit/talking.py) is what `lipsync` serves by default; the grey-box
model (modelkit/reference.py) stays as a test instrument.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from modelkit import reference, talking

FACE_SIZE = 96


def _session(tmp_path: Path, export: Callable[[Path], None]) -> ort.InferenceSession:
    path = tmp_path / "model.onnx"
    export(path)
    onnx.checker.check_model(str(path), full_check=True)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def talking_model(tmp_path_factory: pytest.TempPathFactory) -> ort.InferenceSession:
    return _session(tmp_path_factory.mktemp("talking"), talking.export_talking)


@pytest.fixture(scope="module")
def grey_box(tmp_path_factory: pytest.TempPathFactory) -> ort.InferenceSession:
    return _session(tmp_path_factory.mktemp("grey_box"), reference.export_reference)


def _run(session: ort.InferenceSession, mel: np.ndarray, face: np.ndarray) -> np.ndarray:
    pred: np.ndarray = session.run(["pred"], {"mel": mel, "face": face})[0]
    return pred


def _mel_at_energy(energy: float, frames: slice = slice(None)) -> np.ndarray:
    """One silent mel window whose `frames` are at `energy` (in [0, 1])."""
    mel = np.full((1, 1, 80, 16), reference.MEL_FLOOR, np.float32)
    mel[..., frames] = reference.MEL_FLOOR + energy * reference.MEL_SPAN
    return mel


def _skin(batch: int = 1) -> np.ndarray:
    """A plain light face: every dark pixel in the output is the model's doing."""
    return np.full((batch, 6, FACE_SIZE, FACE_SIZE), 0.8, np.float32)


def _dark_mouth_pixels(pred: np.ndarray) -> int:
    return int((pred[0].mean(axis=0) < 0.4).sum())


def test_talking_model_matches_its_formula_on_random_inputs(
    talking_model: ort.InferenceSession,
) -> None:
    rng = np.random.default_rng(7)
    mel = rng.uniform(-4, 4, (6, 1, 80, 16)).astype(np.float32)
    mel[:3] = rng.uniform(-4, -1, (3, 1, 80, 16))  # partly open mouths, not only wide open
    face = rng.uniform(0, 1, (6, 6, FACE_SIZE, FACE_SIZE)).astype(np.float32)
    expected = talking.expected_prediction(mel, face)
    np.testing.assert_allclose(_run(talking_model, mel, face), expected, atol=1e-5)
    assert (talking.openness(mel) > 0).sum() >= 4, "the inputs must open some mouths"


def test_talking_model_returns_the_reference_crop_unchanged_in_silence(
    talking_model: ort.InferenceSession,
) -> None:
    face = np.random.default_rng(1).uniform(0, 1, (2, 6, 96, 96)).astype(np.float32)
    silent = np.concatenate([_mel_at_energy(0.0), _mel_at_energy(talking.QUIET_ENERGY)])
    np.testing.assert_array_equal(_run(talking_model, silent, face), face[:, 3:6])


def test_garbage_mel_values_never_break_the_model(talking_model: ort.InferenceSession) -> None:
    """Triton warms models up with random bytes: NaN and inf must not index out of range."""
    mel = np.full((3, 1, 80, 16), np.nan, np.float32)
    mel[1], mel[2] = np.inf, -np.inf
    face = _skin(3)
    pred = _run(talking_model, mel, face)
    np.testing.assert_array_equal(pred[0], face[0, 3:])
    np.testing.assert_allclose(pred, talking.expected_prediction(mel, face), atol=1e-5)


def test_louder_windows_open_the_mouth_wider(talking_model: ort.InferenceSession) -> None:
    energies = np.linspace(0.0, talking.LOUD_ENERGY, 8)
    dark = [_dark_mouth_pixels(_run(talking_model, _mel_at_energy(e), _skin())) for e in energies]
    assert dark[0] == 0
    assert all(a <= b for a, b in itertools.pairwise(dark)), dark
    assert dark[-1] > 100, f"a loud window should open the mouth wide, got {dark}"


def test_only_the_head_of_the_window_drives_the_mouth(
    talking_model: ort.InferenceSession,
) -> None:
    face = _skin()
    head = slice(0, talking.ENERGY_MEL_FRAMES)
    tail = slice(talking.ENERGY_MEL_FRAMES, None)
    np.testing.assert_array_equal(_run(talking_model, _mel_at_energy(1.0, tail), face), face[:, 3:])
    assert _dark_mouth_pixels(_run(talking_model, _mel_at_energy(1.0, head), face)) > 100


def test_the_upper_face_never_moves(talking_model: ort.InferenceSession) -> None:
    face = np.random.default_rng(2).uniform(0, 1, (1, 6, 96, 96)).astype(np.float32)
    pred = _run(talking_model, _mel_at_energy(1.0), face)
    above = int(np.floor(talking.mouth_line(FACE_SIZE))) + 1
    np.testing.assert_array_equal(pred[:, :, :above], face[:, 3:6, :above])
    assert not np.allclose(pred[:, :, above:], face[:, 3:6, above:])


def test_grey_box_matches_its_formula_on_random_inputs(grey_box: ort.InferenceSession) -> None:
    rng = np.random.default_rng(7)
    mel = rng.uniform(-4, 4, (5, 1, 80, 16)).astype(np.float32)
    face = rng.uniform(0, 1, (5, 6, 96, 96)).astype(np.float32)
    expected = reference.expected_prediction(mel, face)
    np.testing.assert_allclose(_run(grey_box, mel, face), expected, atol=1e-6)


def test_grey_box_returns_the_reference_crop_unchanged_in_silence(
    grey_box: ort.InferenceSession,
) -> None:
    face = np.random.default_rng(1).uniform(0, 1, (2, 6, 96, 96)).astype(np.float32)
    silent = np.full((2, 1, 80, 16), reference.MEL_FLOOR, np.float32)
    np.testing.assert_array_equal(_run(grey_box, silent, face), face[:, 3:6])


def test_grey_box_loud_window_darkens_only_the_mouth(grey_box: ort.InferenceSession) -> None:
    face = np.ones((1, 6, 96, 96), np.float32)
    loud = np.full((1, 1, 80, 16), 4.0, np.float32)
    pred = _run(grey_box, loud, face)[0]
    mouth = reference.mouth_mask(96).astype(bool)
    np.testing.assert_allclose(pred[:, mouth], 1.0 - reference.DARKENING, atol=1e-6)
    np.testing.assert_array_equal(pred[:, ~mouth], 1.0)
    assert 0.05 < mouth.mean() < 0.2, "the mouth is a small part of the crop"
