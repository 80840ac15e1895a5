"""Every accepted generator layout converts to ONNX with torch's numbers, and the build
configures the lipsync model for its face size; a checkpoint of no known layout is refused."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from modelkit.build import COMPOSITE_KEY, COMPOSITE_REPLACE, build_lipsync
from modelkit.errors import ModelBuildError
from modelkit.repository import input_dims, onnx_path, read_config
from modelkit.wav2lip import STEP_COUNTER, Wav2Lip, load_checkpoint
from modelkit.wav2lip_layouts import LAYOUTS, WAV2LIP_96, layout_for_size
from tests.models.checkpoints import lipsync_repository, save_checkpoint, trained_like
from tests.models.test_build import MAX_IR_VERSION, MAX_OPSET

# The bound on the converted model's error against torch.
MAX_ABS_ERROR = 1e-4
BATCH = 2


@dataclass(frozen=True)
class Case:
    name: str
    face_size: int
    style: str


CASES = (
    Case("wav2lip96", 96, "training"),
    Case("wav2lip96-gan", 96, "gan"),
    Case("wav2lip192", 192, "plain"),
    Case("wav2lip256", 256, "training"),
    Case("wav2lip288", 288, "training"),
    Case("wav2lip384", 384, "plain"),
)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_converted_checkpoint_gives_torchs_faces_at_its_size(case: Case, tmp_path: Path) -> None:
    layout = layout_for_size(case.face_size)
    model = trained_like(layout, seed=case.face_size)
    checkpoint = save_checkpoint(model.state_dict(), tmp_path / "generator.pth", case.style)
    repository = lipsync_repository(tmp_path)

    started = time.perf_counter()
    plan = build_lipsync(repository, "checkpoint", checkpoint, work=tmp_path, log=lambda _: None)
    converted_s = time.perf_counter() - started

    assert plan.face_size == case.face_size
    config = read_config(repository / "lipsync")
    assert input_dims(config, "face") == [6, case.face_size, case.face_size]
    assert list(config.output[0].dims) == [3, case.face_size, case.face_size]
    assert config.parameters[COMPOSITE_KEY].string_value == COMPOSITE_REPLACE
    onnx_file = onnx_path(repository, "lipsync")
    proto = onnx.load(str(onnx_file), load_external_data=False)
    assert proto.ir_version <= MAX_IR_VERSION, "production's ONNX Runtime reads it"
    assert all(o.version <= MAX_OPSET for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(case.face_size)
    mel = rng.uniform(-4.0, 4.0, (BATCH, 1, 80, 16)).astype(np.float32)
    face = rng.uniform(0.0, 1.0, (BATCH, 6, case.face_size, case.face_size)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(mel), torch.from_numpy(face)).numpy()

    (pred,) = session.run(["pred"], {"mel": mel, "face": face})

    error = float(np.abs(pred - expected).max())
    print(
        f"{case.name}: max abs error {error:.2e} (batch {BATCH}), converted in {converted_s:.1f} s"
    )
    assert pred.shape == (BATCH, 3, case.face_size, case.face_size)
    assert error < MAX_ABS_ERROR


def test_no_two_layouts_share_their_tensors() -> None:
    signatures = set()
    for layout in LAYOUTS:
        with torch.device("meta"):
            state = Wav2Lip(layout).state_dict()
        signatures.add(
            frozenset((k, tuple(v.shape)) for k, v in state.items() if not k.endswith(STEP_COUNTER))
        )
    assert len(signatures) == len(LAYOUTS)


def test_a_discriminator_checkpoint_is_refused_with_its_keys_and_the_layouts(
    tmp_path: Path,
) -> None:
    # Wav2Lip's visual-quality discriminator shares the encoder's names but ends in
    # `binary_pred`: the file people most often pass by mistake.
    with torch.device("meta"):
        state = {
            k: torch.zeros(v.shape)
            for k, v in Wav2Lip(WAV2LIP_96).state_dict().items()
            if k.startswith("face_encoder_blocks.")
        }
    state["binary_pred.0.weight"] = torch.zeros(1, 512, 1, 1)
    checkpoint = save_checkpoint(state, tmp_path / "disc.pth", "training")

    with pytest.raises(ModelBuildError) as raised:
        load_checkpoint(checkpoint)

    message = str(raised.value)
    assert message.startswith(f"{checkpoint}: does not fit Wav2Lip: ")
    assert "missing keys (audio_encoder.0.conv_block.0.weight" in message
    assert "1 unexpected key (binary_pred.0.weight)" in message
    assert "accepted layouts: wav2lip96 (" in message
    assert all(layout.name in message for layout in LAYOUTS)
    assert "\n" not in message


def test_a_checkpoint_of_another_size_than_asked_is_refused(tmp_path: Path) -> None:
    checkpoint = save_checkpoint(
        trained_like(WAV2LIP_96, seed=0).state_dict(), tmp_path / "wav2lip.pth", "plain"
    )

    with pytest.raises(ModelBuildError) as raised:
        build_lipsync(
            lipsync_repository(tmp_path),
            "checkpoint",
            checkpoint,
            face_size=192,
            work=tmp_path,
            log=lambda _: None,
        )

    message = str(raised.value)
    assert "does not fit Wav2Lip" in message
    assert "(closest layout: wav2lip192)" in message


def test_a_size_with_no_layout_names_the_sizes(tmp_path: Path) -> None:
    with pytest.raises(
        ModelBuildError, match=r"no Wav2Lip layout for 128 px faces; sizes: 96, 192"
    ):
        build_lipsync(lipsync_repository(tmp_path), "wav2lip-random", face_size=128, work=tmp_path)
