"""The analytic face restorer: an unsharp mask with the face_restore contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import skimage.data

from modelkit import restore_analytic
from modelkit.build import build_face_restore, face_restore_artifact
from modelkit.repository import read_config
from orchestrator.contracts import FACE_RESTORE, TensorSpec, check_contract


def _run(face: np.ndarray) -> np.ndarray:
    model = restore_analytic.build_unsharp_model()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    restored: np.ndarray = session.run(["restored"], {"face": face})[0]
    return restored


def test_the_graph_computes_the_documented_formula() -> None:
    face = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)
    np.testing.assert_allclose(_run(face), restore_analytic.expected_restored(face), atol=1e-5)


def test_a_flat_face_is_left_alone_and_an_edge_gets_sharper() -> None:
    flat = np.full((1, 3, 32, 32), 0.4, np.float32)
    np.testing.assert_allclose(_run(flat), flat, atol=1e-6)
    astronaut = skimage.data.astronaut()[::2, ::2, ::-1].astype(np.float32) / 255.0
    face = np.ascontiguousarray(astronaut.transpose(2, 0, 1))[None]
    restored = _run(face)
    assert restored.min() >= 0.0 and restored.max() <= 1.0

    def detail(image: np.ndarray) -> float:
        return float(np.abs(np.diff(image, axis=-1)).mean())

    assert detail(restored) > 1.2 * detail(face)


def test_the_build_writes_a_config_on_contract_with_the_model(tmp_path: Path) -> None:
    build_face_restore(tmp_path, "unsharp", None, tmp_path / "stamps", log=lambda _: None)
    assert face_restore_artifact(tmp_path, "unsharp").out.is_file()
    config = read_config(tmp_path / "face_restore")
    assert config.max_batch_size >= 1
    tensors = {
        kind: {t.name: TensorSpec(t.name, "FP32", tuple(t.dims)) for t in tensors}
        for kind, tensors in (("in", config.input), ("out", config.output))
    }
    size = check_contract("face_restore", FACE_RESTORE, tensors["in"], tensors["out"])["S"]
    assert size == restore_analytic.FACE_SIZE
