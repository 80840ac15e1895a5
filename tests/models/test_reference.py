"""The reference lipsync model computes exactly its documented formula."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from modelkit.reference import (
    DARKENING,
    MEL_FLOOR,
    expected_prediction,
    export_reference,
    mouth_mask,
)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> ort.InferenceSession:
    path = tmp_path_factory.mktemp("reference") / "model.onnx"
    export_reference(path)
    onnx.checker.check_model(str(path), full_check=True)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, mel: np.ndarray, face: np.ndarray) -> np.ndarray:
    return session.run(["pred"], {"mel": mel, "face": face})[0]


def test_matches_the_formula_on_random_inputs(session: ort.InferenceSession) -> None:
    rng = np.random.default_rng(7)
    mel = rng.uniform(-4, 4, (5, 1, 80, 16)).astype(np.float32)
    face = rng.uniform(0, 1, (5, 6, 96, 96)).astype(np.float32)
    np.testing.assert_allclose(_run(session, mel, face), expected_prediction(mel, face), atol=1e-6)


def test_silence_returns_the_reference_crop_unchanged(session: ort.InferenceSession) -> None:
    face = np.random.default_rng(1).uniform(0, 1, (2, 6, 96, 96)).astype(np.float32)
    silent = np.full((2, 1, 80, 16), MEL_FLOOR, np.float32)
    np.testing.assert_array_equal(_run(session, silent, face), face[:, 3:6])


def test_loud_window_darkens_only_the_mouth(session: ort.InferenceSession) -> None:
    face = np.ones((1, 6, 96, 96), np.float32)
    loud = np.full((1, 1, 80, 16), 4.0, np.float32)
    pred = _run(session, loud, face)[0]
    mouth = mouth_mask(96).astype(bool)
    np.testing.assert_allclose(pred[:, mouth], 1.0 - DARKENING, atol=1e-6)
    np.testing.assert_array_equal(pred[:, ~mouth], 1.0)
    assert 0.05 < mouth.mean() < 0.2, "the mouth is a small part of the crop"
