"""GFPGAN v1.4 checkpoints converted to the face_restore model: same faces as torch, a Triton
config with the contract, and one clear line for a file of another layout."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch.nn import functional as F
from tritonclient.grpc import model_config_pb2

from localtriton.launcher import local_triton
from modelkit.build import build_face_restore, build_repository, face_restore_artifact
from modelkit.errors import ModelBuildError
from modelkit.gfpgan import (
    FaceRestorer,
    GFPGANv1Clean,
    ModulatedConv2d,
    StyleConv,
    export_gfpgan,
    load_checkpoint,
    random_gfpgan,
    triton_config,
    weights_of,
)
from modelkit.repository import onnx_path, read_config, write_config
from orchestrator.triton import TritonClient
from tests.conftest import TRITON_VENV

# The converted graph must give torch's faces to within this, in [0, 1] pixel units; it
# measured 3.9e-7 (small model) and 8.9e-7 (full size, v1.4 layout) on this machine.
MAX_ABS_ERROR = 1e-3
# A small instance of the same graph, for the quick lane: 32-pixel faces, narrow channels.
SMALL_SIZE = 32
SMALL = {"out_size": SMALL_SIZE, "style_dim": 32, "narrow": 0.125}


def _trained_like(model: GFPGANv1Clean, seed: int) -> GFPGANv1Clean:
    """Noise strengths away from their zero start, as after training, so an export that
    dropped the fixed noise would show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, StyleConv):
                module.weight.uniform_(0.05, 0.2, generator=generator)
    return model


def _faces(batch: int, size: int) -> np.ndarray:
    faces: np.ndarray = np.random.default_rng(0).uniform(0.0, 1.0, (batch, 3, size, size))
    return faces.astype(np.float32)


def _torch_restore(model: GFPGANv1Clean, faces: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        restored: torch.Tensor = FaceRestorer(model)(torch.from_numpy(faces))
        return restored.numpy()


def _assert_same_faces(restored: np.ndarray, expected: np.ndarray) -> None:
    assert restored.shape == expected.shape
    assert restored.min() >= 0.0 and restored.max() <= 1.0
    # Random weights must not saturate the picture, or the comparison proves nothing.
    assert np.mean((expected > 0.0) & (expected < 1.0)) > 0.5
    assert np.abs(restored - expected).max() < MAX_ABS_ERROR


def test_modulated_conv_equals_stylegan2s_per_sample_weights() -> None:
    """The export scales the input; StyleGAN2 scales a copy of the weight per sample and runs
    one grouped conv. Both must give the same features."""
    torch.manual_seed(0)
    conv = ModulatedConv2d(8, 16, 3, style_dim=12, demodulate=True, upsample=True)
    x, style = torch.randn(3, 8, 5, 5), torch.randn(3, 12)
    with torch.no_grad():
        scale = conv.modulation(style)
        weight = conv.weight * scale[:, None, :, None, None]  # [B, cout, cin, k, k]
        weight = (
            weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4)) + 1e-8)[..., None, None, None]
        )
        up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        grouped = F.conv2d(
            up.reshape(1, -1, 10, 10), weight.reshape(-1, 8, 3, 3), padding=1, groups=3
        )
        np.testing.assert_allclose(
            conv(x, style).numpy(), grouped.reshape(3, 16, 10, 10).numpy(), atol=1e-5
        )


def test_small_gfpgan_exports_with_a_dynamic_batch_and_the_same_faces(tmp_path: Path) -> None:
    model = _trained_like(random_gfpgan(seed=1, **SMALL), seed=2)
    out = tmp_path / "model.onnx"
    export_gfpgan(model, out)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    faces = _faces(3, SMALL_SIZE)  # not the traced batch of 2

    (restored,) = session.run(["restored"], {"face": faces})

    _assert_same_faces(restored, _torch_restore(model, faces))
    assert [(t.name, t.shape) for t in session.get_inputs()] == [("face", ["batch", 3, 32, 32])]
    assert [(t.name, t.shape) for t in session.get_outputs()] == [
        ("restored", ["batch", 3, 32, 32])
    ]


def test_released_layouts_are_read_from_params_ema_then_params_then_bare() -> None:
    ema, params = {"a": torch.zeros(1)}, {"b": torch.zeros(1)}
    path = Path("GFPGANv1.4.pth")
    assert weights_of({"params_ema": ema, "params": params}, path) is ema
    assert weights_of({"params": params}, path) is params
    assert weights_of(ema, path) is ema


def test_checkpoint_of_another_layout_is_refused_with_the_keys_that_differ(
    tmp_path: Path,
) -> None:
    other = tmp_path / "codeformer.pth"
    torch.save({"params_ema": {"encoder.conv_in.weight": torch.zeros(64, 3, 3, 3)}}, other)

    with pytest.raises(ModelBuildError) as raised:
        load_checkpoint(other)

    message = str(raised.value)
    assert message.startswith(f"{other}: does not fit GFPGANv1Clean: ")
    assert "285 missing keys (conv_body_first.weight, conv_body_first.bias, " in message
    assert "1 unexpected key (encoder.conv_in.weight)" in message
    assert "GFPGAN v1.4's layout" in message
    assert "\n" not in message


def test_face_restore_without_a_checkpoint_says_what_is_needed(tmp_path: Path) -> None:
    with pytest.raises(ModelBuildError, match=re.escape("needs --gfpgan-checkpoint PATH")):
        face_restore_artifact(tmp_path, "gfpgan", None)


def _assert_face_restore_contract(config: model_config_pb2.ModelConfig) -> None:
    face = [3, 512, 512]
    assert config.name == "face_restore"
    assert config.platform == "onnxruntime_onnx"
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("face", model_config_pb2.TYPE_FP32, face)
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        ("restored", model_config_pb2.TYPE_FP32, face)
    ]
    assert config.max_batch_size >= 4
    assert config.HasField("dynamic_batching")
    batching = config.dynamic_batching
    assert all(size <= config.max_batch_size for size in batching.preferred_batch_size)
    assert batching.default_queue_policy.max_queue_size > 0, "overload is refused, not queued"
    assert [(g.kind, g.count) for g in config.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_GPU, 1)
    ]
    assert [set(w.inputs) for w in config.model_warmup] == [{"face"}]


def test_written_config_parses_and_has_the_face_restore_contract(tmp_path: Path) -> None:
    write_config(triton_config(), tmp_path / "face_restore")
    _assert_face_restore_contract(read_config(tmp_path / "face_restore"))


@pytest.mark.slow
def test_v14_checkpoint_builds_a_face_restore_model_that_matches_torch(tmp_path: Path) -> None:
    """The full-size network in the released layout, written as GFPGANv1.4.pth is."""
    model = _trained_like(random_gfpgan(seed=3), seed=4)
    checkpoint = tmp_path / "GFPGANv1.4.pth"
    torch.save({"params_ema": model.state_dict()}, checkpoint)
    repository = tmp_path / "model_repository"

    build_face_restore(repository, "gfpgan", checkpoint, tmp_path / "stamps", log=lambda _: None)

    _assert_face_restore_contract(read_config(repository / "face_restore"))
    session = ort.InferenceSession(
        str(repository / "face_restore" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    faces = _faces(1, 512)
    (restored,) = session.run(["restored"], {"face": faces})
    _assert_same_faces(restored, _torch_restore(model, faces))


def test_a_gfpgan_checkpoint_without_face_restore_is_not_silently_ignored(
    tmp_path: Path,
) -> None:
    with pytest.raises(ModelBuildError, match=re.escape("only read with --face-restore gfpgan")):
        build_repository(tmp_path, gfpgan_checkpoint=tmp_path / "GFPGANv1.4.pth")


@pytest.mark.slow
async def test_triton_serves_a_converted_restorer_under_the_face_restore_contract(
    tmp_path: Path,
) -> None:
    """The written config and graph load in a real Triton, which answers with torch's faces.
    A small instance keeps the CPU server quick; the config is the same but for S."""
    model = _trained_like(random_gfpgan(seed=5, **SMALL), seed=6)
    size = SMALL_SIZE
    repository = tmp_path / "model_repository"
    onnx_path(repository, "face_restore").parent.mkdir(parents=True)
    export_gfpgan(model, onnx_path(repository, "face_restore"))
    write_config(triton_config(size), repository / "face_restore")
    faces = _faces(2, size)

    with local_triton(repository, tmp_path / "triton", TRITON_VENV, log=lambda _: None) as server:
        async with TritonClient(server.endpoints.grpc_url) as client:
            spec = await client.model_spec("face_restore")
            reply = await client.infer("face_restore", {"face": faces}, ["restored"])

    assert {name: t.shape for name, t in spec.inputs.items()} == {"face": (3, size, size)}
    assert {name: t.shape for name, t in spec.outputs.items()} == {"restored": (3, size, size)}
    _assert_same_faces(reply["restored"], _torch_restore(model, faces))
