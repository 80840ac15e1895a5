"""Renders the CPU copy of the production model repository for the local server."""

from __future__ import annotations

import shutil
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from modelkit.errors import ModelBuildError
from modelkit.repository import ONNX_NAME, model_dirs, read_config, write_config

SHIM = Path(__file__).with_name("onnx_model.py")


def cpu_config(
    config: model_config_pb2.ModelConfig, cpu_instances: int | None = None
) -> model_config_pb2.ModelConfig:
    """The same config served by the Python-backend shim on CPU instances.

    Batching, queue policy, tensors and warm-up stay identical; only the platform, the
    instance kind and GPU-only accelerators change.
    """
    cpu = model_config_pb2.ModelConfig()
    cpu.CopyFrom(config)
    cpu.ClearField("platform")
    cpu.backend = "python"
    for group in cpu.instance_group:
        group.kind = model_config_pb2.ModelInstanceGroup.KIND_CPU
        group.ClearField("gpus")
        if cpu_instances is not None:
            group.count = cpu_instances
    cpu.optimization.execution_accelerators.ClearField("gpu_execution_accelerator")
    return cpu


def render_cpu_repository(
    source: Path, target: Path, *, cpu_instances: int | None = None
) -> list[str]:
    """Writes the CPU copy of `source` into `target` (replaced) and returns the model names."""
    models = model_dirs(source)
    if not models:
        raise ModelBuildError(f"{source}: no model directories with a config.pbtxt")
    if target.exists():
        shutil.rmtree(target)
    names = []
    for model_dir in models:
        config = read_config(model_dir)
        versions = sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
        if not versions:
            raise ModelBuildError(f"{model_dir}: no version directory (expected {model_dir}/1/)")
        out_dir = target / model_dir.name
        write_config(cpu_config(config, cpu_instances), out_dir)
        for version in versions:
            onnx_file = version / ONNX_NAME
            if not onnx_file.is_file():
                raise ModelBuildError(f"{onnx_file}: missing; build it with scripts/build-models")
            (out_dir / version.name).mkdir(parents=True)
            shutil.copyfile(SHIM, out_dir / version.name / "model.py")
            (out_dir / version.name / ONNX_NAME).symlink_to(onnx_file.resolve())
        names.append(config.name or model_dir.name)
    return names
