"""benchmarks.models' pieces that need no server: the repository it serves and its load."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks import models
from modelkit.build import COMPOSITE_KEY, COMPOSITE_REPLACE
from modelkit.repository import input_dims, read_config
from orchestrator.contracts import TensorSpec
from orchestrator.triton import ModelSpec


def _spec(inputs: dict[str, tuple[int, ...]]) -> ModelSpec:
    return ModelSpec(
        name="m",
        versions=("1",),
        platform="onnxruntime_onnx",
        max_batch_size=8,
        inputs={name: TensorSpec(name, "FP32", shape) for name, shape in inputs.items()},
        outputs={"out": TensorSpec("out", "FP32", (3, 4, 4))},
        instance_groups=(),
        preferred_batch_sizes=(),
        max_queue_delay_us=0,
        max_queue_size=0,
    )


def test_each_size_is_served_under_its_own_name_at_its_size(tmp_path: Path) -> None:
    fake_onnx = tmp_path / "model.onnx"
    fake_onnx.write_bytes(b"")

    names = models.benchmark_repository(tmp_path / "repo", {96: fake_onnx, 288: fake_onnx})

    assert names == {96: "lipsync_wav2lip96", 288: "lipsync_wav2lip288"}
    config = read_config(tmp_path / "repo" / "lipsync_wav2lip288")
    assert config.name == "lipsync_wav2lip288"
    assert input_dims(config, "face") == [6, 288, 288]
    assert config.parameters[COMPOSITE_KEY].string_value == COMPOSITE_REPLACE
    assert not config.model_warmup


def test_load_has_the_declared_shapes_and_ranges() -> None:
    inputs = models.random_inputs(_spec({"mel": (1, 80, 16), "face": (6, 8, 8)}), batch=2)

    assert inputs is not None
    assert inputs["mel"].shape == (2, 1, 80, 16)
    assert inputs["mel"].min() < 0.0 < inputs["mel"].max() <= 4.0
    assert inputs["face"].shape == (2, 6, 8, 8)
    assert inputs["face"].min() >= 0.0 and inputs["face"].max() <= 1.0
    assert inputs["face"].dtype == np.float32


def test_a_model_of_variable_shape_is_not_given_a_guessed_load() -> None:
    assert models.random_inputs(_spec({"image": (3, -1, -1)}), batch=2) is None
