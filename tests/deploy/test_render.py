"""modelkit.deploy: the production configs Triton serves under docker compose, read back with
Triton's own protobuf schema (modelkit.repository.read_config)."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from modelkit.deploy import (
    DEFAULT_ENGINE_CACHE_DIR,
    DeployOptions,
    main,
    production_config,
    render_production_repository,
)
from modelkit.errors import ModelBuildError
from modelkit.repository import read_config, write_config
from tests.deploy.conftest import REPO

SOURCE = REPO / "model_repository"
KIND_GPU = model_config_pb2.ModelInstanceGroup.KIND_GPU
KIND_CPU = model_config_pb2.ModelInstanceGroup.KIND_CPU


def _render(tmp_path: Path, **options: object) -> dict[str, model_config_pb2.ModelConfig]:
    render_production_repository(SOURCE, tmp_path, DeployOptions(**options))  # type: ignore[arg-type]
    return {name: read_config(tmp_path / name) for name in ("lipsync", "face_detector")}


def _groups(config: model_config_pb2.ModelConfig) -> list[tuple[int, int, list[int]]]:
    return [(g.kind, g.count, list(g.gpus)) for g in config.instance_group]


def _without_instances(config: model_config_pb2.ModelConfig) -> model_config_pb2.ModelConfig:
    stripped = model_config_pb2.ModelConfig()
    stripped.CopyFrom(config)
    stripped.ClearField("instance_group")
    return stripped


def test_default_render_keeps_each_models_count_on_every_gpu(tmp_path: Path) -> None:
    rendered = _render(tmp_path)
    for name, config in rendered.items():
        source = read_config(SOURCE / name)
        # One KIND_GPU group without a `gpus` list: Triton puts `count` on each GPU.
        assert _groups(config) == [(KIND_GPU, source.instance_group[0].count, [])]
        # Everything else (tensors, batching, queue policy, warm-up) is the source's.
        assert _without_instances(config) == _without_instances(source)
        assert not config.HasField("optimization")


def test_instances_per_gpu_applies_to_every_model_and_per_model_counts_win(
    tmp_path: Path,
) -> None:
    rendered = _render(tmp_path, instances_per_gpu=3, model_instances={"lipsync": 5})
    assert _groups(rendered["lipsync"]) == [(KIND_GPU, 5, [])]
    assert _groups(rendered["face_detector"]) == [(KIND_GPU, 3, [])]


def test_cpu_instances_and_gpu_lists_in_the_source_become_gpu_instances_everywhere() -> None:
    source = read_config(SOURCE / "lipsync")
    source.ClearField("instance_group")
    source.instance_group.add(kind=KIND_CPU, count=4)
    source.instance_group.add(kind=KIND_GPU, count=1, gpus=[0])
    config = production_config(source, DeployOptions())
    # A model left on CPU instances next to a GPU is the silent fallback this rules out.
    assert _groups(config) == [(KIND_GPU, 4, [])]


def test_tensorrt_fp16_is_added_to_the_chosen_models_only(tmp_path: Path) -> None:
    rendered = _render(tmp_path, tensorrt_fp16=True, tensorrt_models=frozenset({"lipsync"}))
    accelerators = rendered["lipsync"].optimization.execution_accelerators
    (accelerator,) = accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert dict(accelerator.parameters) == {
        "precision_mode": "FP16",
        "max_workspace_size_bytes": str(1 << 30),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": DEFAULT_ENGINE_CACHE_DIR,
    }
    assert not rendered["face_detector"].HasField("optimization")
    # The text Triton reads has the block the ONNX Runtime backend documents.
    text = (tmp_path / "lipsync" / "config.pbtxt").read_text()
    assert 'gpu_execution_accelerator {\n      name: "tensorrt"' in text


def test_tensorrt_warms_up_both_ends_of_the_batch_range_first(tmp_path: Path) -> None:
    rendered = _render(tmp_path, tensorrt_fp16=True)
    lipsync = rendered["lipsync"]
    warmups = [(w.name, w.batch_size) for w in lipsync.model_warmup]
    assert warmups == [("tensorrt_batch_1", 1), ("tensorrt_batch_64", 64), ("random_batch_16", 16)]
    first = lipsync.model_warmup[0]
    assert {name: list(sample.dims) for name, sample in first.inputs.items()} == {
        "mel": [1, 80, 16],
        "face": [6, 96, 96],
    }
    # The detector's height and width are dynamic: no batch range to pin, none added.
    detector_warmups = [w.name for w in rendered["face_detector"].model_warmup]
    assert detector_warmups == [w.name for w in read_config(SOURCE / "face_detector").model_warmup]


def test_rendering_again_is_idempotent_and_can_turn_tensorrt_off(tmp_path: Path) -> None:
    on = _render(tmp_path / "once", tensorrt_fp16=True)["lipsync"]
    # Render from an already rendered repository: nothing doubles up.
    again = production_config(on, DeployOptions(tensorrt_fp16=True))
    assert again == on
    off = production_config(on, DeployOptions(tensorrt_fp16=False))
    assert off == read_config(SOURCE / "lipsync")


def test_other_accelerators_of_the_source_are_kept() -> None:
    source = read_config(SOURCE / "lipsync")
    cuda = source.optimization.execution_accelerators.gpu_execution_accelerator.add(name="cuda")
    cuda.parameters["cudnn_conv_algo_search"] = "1"
    config = production_config(source, DeployOptions(tensorrt_fp16=True))
    names = [a.name for a in config.optimization.execution_accelerators.gpu_execution_accelerator]
    assert names == ["tensorrt", "cuda"]  # TensorRT first: Triton tries them in order


def test_unknown_model_names_are_refused(tmp_path: Path) -> None:
    options = DeployOptions(model_instances={"lipsink": 2})
    with pytest.raises(ModelBuildError, match="no model named lipsink"):
        render_production_repository(SOURCE, tmp_path, options)


def test_model_files_in_the_target_are_left_alone(tmp_path: Path) -> None:
    onnx = tmp_path / "lipsync" / "1" / "model.onnx"
    onnx.parent.mkdir(parents=True)
    onnx.write_bytes(b"built earlier")
    stale = read_config(SOURCE / "lipsync")
    stale.max_batch_size = 1
    write_config(stale, tmp_path / "lipsync")
    render_production_repository(SOURCE, tmp_path)
    assert onnx.read_bytes() == b"built earlier"
    assert read_config(tmp_path / "lipsync").max_batch_size == 64


def test_cli_reads_the_environment_and_flags_win(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {
        "TRITON_INSTANCES_PER_GPU": "2",
        "TRITON_MODEL_INSTANCES": "face_detector=4",
        "TRITON_TENSORRT_FP16": "true",
        "TRITON_TENSORRT_MODELS": "lipsync",
        "TRITON_TENSORRT_WORKSPACE_BYTES": "2147483648",
    }
    argv = ["--source", str(SOURCE), "--target", str(tmp_path), "--instances-per-gpu", "6"]
    assert main(argv, env) == 0
    lipsync = read_config(tmp_path / "lipsync")
    detector = read_config(tmp_path / "face_detector")
    assert _groups(lipsync) == [(KIND_GPU, 6, [])]
    assert _groups(detector) == [(KIND_GPU, 4, [])]
    (trt,) = lipsync.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.parameters["max_workspace_size_bytes"] == "2147483648"
    out = capsys.readouterr().out
    assert "lipsync: 6 instance(s) on every GPU" in out


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TRITON_INSTANCES_PER_GPU", "0", "TRITON_INSTANCES_PER_GPU: '0'"),
        ("TRITON_MODEL_INSTANCES", "lipsync", "TRITON_MODEL_INSTANCES: 'lipsync' is not MODEL"),
        ("TRITON_TENSORRT_FP16", "maybe", "TRITON_TENSORRT_FP16: 'maybe' is neither"),
        ("TRITON_TENSORRT_MODELS", "detector", "no model named detector"),
    ],
)
def test_cli_names_the_bad_setting_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], variable: str, value: str, message: str
) -> None:
    argv = ["--source", str(SOURCE), "--target", str(tmp_path / "models")]
    assert main(argv, {variable: value}) == 2
    err = capsys.readouterr().err
    assert err.startswith("deploy: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "models").exists()


def test_rendered_text_parses_as_a_triton_model_config(tmp_path: Path) -> None:
    _render(tmp_path, tensorrt_fp16=True, instances_per_gpu=2)
    for name in ("lipsync", "face_detector"):
        text = (tmp_path / name / "config.pbtxt").read_text()
        parsed = text_format.Parse(text, model_config_pb2.ModelConfig())
        assert parsed.name == name
