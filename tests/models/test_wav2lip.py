"""Wav2Lip checkpoints converted to ONNX: same numbers as torch, clear errors for bad files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from modelkit.errors import ModelBuildError
from modelkit.wav2lip import Wav2Lip, export_wav2lip, load_checkpoint, random_generator


@pytest.fixture(scope="module")
def trained_like_model() -> Wav2Lip:
    """Random weights with BatchNorm statistics and affine terms away from their defaults,
    as in a trained checkpoint, so a conversion that dropped them would show."""
    model = random_generator(seed=1)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.uniform_(0.8, 1.2, generator=generator)
                module.bias.normal_(0.0, 0.05, generator=generator)
    return model


def _save_training_checkpoint(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    """Saves `state_dict` the way Wav2Lip's training script does, under nn.DataParallel."""
    torch.save(
        {
            "state_dict": {f"module.{key}": value for key, value in state_dict.items()},
            "global_step": 1,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def checkpoint(trained_like_model: Wav2Lip, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wav2lip") / "checkpoint.pth"
    return _save_training_checkpoint(trained_like_model.state_dict(), path)


@pytest.fixture(scope="module")
def session(checkpoint: Path) -> ort.InferenceSession:
    out = checkpoint.with_name("model.onnx")
    export_wav2lip(load_checkpoint(checkpoint), out)
    return ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


def test_converted_checkpoint_gives_the_same_faces_as_torch(
    session: ort.InferenceSession, trained_like_model: Wav2Lip
) -> None:
    rng = np.random.default_rng(0)
    mel = rng.uniform(-4.0, 4.0, (3, 1, 80, 16)).astype(np.float32)
    face = rng.uniform(0.0, 1.0, (3, 6, 96, 96)).astype(np.float32)
    with torch.no_grad():
        expected = trained_like_model(torch.from_numpy(mel), torch.from_numpy(face)).numpy()

    (pred,) = session.run(["pred"], {"mel": mel, "face": face})

    assert pred.shape == (3, 3, 96, 96)
    assert pred.min() >= 0.0
    assert pred.max() <= 1.0
    np.testing.assert_allclose(pred, expected, atol=1e-4)


def test_exported_tensors_follow_the_lipsync_contract(session: ort.InferenceSession) -> None:
    inputs = {tensor.name: tensor.shape for tensor in session.get_inputs()}
    outputs = {tensor.name: tensor.shape for tensor in session.get_outputs()}

    assert inputs == {"mel": ["batch", 1, 80, 16], "face": ["batch", 6, 96, 96]}
    assert outputs == {"pred": ["batch", 3, 96, 96]}


def test_corrupt_checkpoint_is_named_in_the_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "wav2lip.pth"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))

    with pytest.raises(ModelBuildError, match=re.escape(f"{corrupt}: not a readable PyTorch file")):
        load_checkpoint(corrupt)


def test_checkpoint_missing_a_key_names_the_file_and_the_key(
    trained_like_model: Wav2Lip, tmp_path: Path
) -> None:
    state_dict = trained_like_model.state_dict()
    del state_dict["output_block.1.weight"]
    incomplete = _save_training_checkpoint(state_dict, tmp_path / "wav2lip.pth")

    with pytest.raises(ModelBuildError) as raised:
        load_checkpoint(incomplete)

    message = str(raised.value)
    assert message.startswith(f"{incomplete}: ")
    assert "1 missing key (output_block.1.weight)" in message
    assert "\n" not in message


def test_missing_checkpoint_is_named_in_the_error(tmp_path: Path) -> None:
    missing = tmp_path / "wav2lip.pth"

    with pytest.raises(ModelBuildError, match=re.escape(f"{missing}: file not found")):
        load_checkpoint(missing)
