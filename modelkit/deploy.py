"""Renders the production (GPU) configs of the model repository that Triton serves.

    python -m modelkit.deploy --target /models                      # counts as in the source
    python -m modelkit.deploy --target /models --instances-per-gpu 2
    python -m modelkit.deploy --target /models --tensorrt-fp16 --tensorrt-models lipsync

Every option falls back to an environment variable (TRITON_INSTANCES_PER_GPU, ...), so that
docker compose can pass `.env` through. Only config.pbtxt files are written; the model.onnx
files are built into the same repository by `python -m modelkit.build --repository TARGET`
(the models image runs both, see docker/build-models.sh).

Each model gets exactly one KIND_GPU instance group with no `gpus` list: Triton then puts
`count` instances on every GPU it can see, so a host with more GPUs serves more with the same
files, and no model can end up on CPU instances by accident.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc.model_config_pb2 import ModelConfig

from modelkit.errors import ModelBuildError
from modelkit.repository import model_dirs, read_config, write_config

# The ONNX Runtime backend's name for its TensorRT execution provider.
TENSORRT = "tensorrt"
# TensorRT's scratch memory per engine; 1 GiB is the ONNX Runtime backend's own default.
DEFAULT_WORKSPACE_BYTES = 1 << 30
# Where the Triton container keeps built engines: a volume in docker-compose.yml, so a
# restart loads them instead of building them again (minutes per model).
DEFAULT_ENGINE_CACHE_DIR = "/trt-cache"
# Warm-up samples this module adds; the prefix marks them as ours on a re-render.
TENSORRT_WARMUP_PREFIX = "tensorrt_batch_"

ENV_INSTANCES_PER_GPU = "TRITON_INSTANCES_PER_GPU"
ENV_MODEL_INSTANCES = "TRITON_MODEL_INSTANCES"
ENV_TENSORRT_FP16 = "TRITON_TENSORRT_FP16"
ENV_TENSORRT_MODELS = "TRITON_TENSORRT_MODELS"
ENV_TENSORRT_WORKSPACE_BYTES = "TRITON_TENSORRT_WORKSPACE_BYTES"
ENV_TENSORRT_CACHE_DIR = "TRITON_TENSORRT_CACHE_DIR"

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")

KIND_GPU = model_config_pb2.ModelInstanceGroup.KIND_GPU
MessageT = TypeVar("MessageT", bound=Message)


@dataclass(frozen=True)
class DeployOptions:
    """What the production configs change relative to the source repository."""

    # Instances per GPU for every model; None keeps each model's count from its source config.
    instances_per_gpu: int | None = None
    # Per-model counts; they win over instances_per_gpu.
    model_instances: Mapping[str, int] = field(default_factory=dict)
    tensorrt_fp16: bool = False
    # Models that get TensorRT when tensorrt_fp16 is on; None means every model.
    tensorrt_models: frozenset[str] | None = None
    tensorrt_workspace_bytes: int = DEFAULT_WORKSPACE_BYTES
    # None: no engine cache, every start builds the engines again.
    tensorrt_cache_dir: str | None = DEFAULT_ENGINE_CACHE_DIR

    def instances_for(self, model: str, source_count: int) -> int:
        if model in self.model_instances:
            return self.model_instances[model]
        if self.instances_per_gpu is not None:
            return self.instances_per_gpu
        return source_count

    def uses_tensorrt(self, model: str) -> bool:
        return self.tensorrt_fp16 and (
            self.tensorrt_models is None or model in self.tensorrt_models
        )


def production_config(config: ModelConfig, options: DeployOptions) -> ModelConfig:
    """`config` as production serves it: GPU instances on every GPU, TensorRT if asked for.

    Tensors, batching, queue policy and warm-up are kept as they are.
    """
    name = config.name
    prod = ModelConfig()
    prod.CopyFrom(config)
    source_count = max((group.count for group in config.instance_group), default=1) or 1
    prod.ClearField("instance_group")
    group = prod.instance_group.add()
    group.kind = KIND_GPU
    group.count = options.instances_for(name, source_count)
    # No `gpus` list on purpose: Triton places `count` instances on each visible GPU.

    accelerators = prod.optimization.execution_accelerators
    others = _copies(a for a in accelerators.gpu_execution_accelerator if a.name != TENSORRT)
    kept_warmups = _copies(
        w for w in prod.model_warmup if not w.name.startswith(TENSORRT_WARMUP_PREFIX)
    )
    prod.ClearField("model_warmup")
    if options.uses_tensorrt(name):
        accelerators.ClearField("gpu_execution_accelerator")
        # First in the list: Triton gives the accelerators priority in list order.
        _add_tensorrt(accelerators.gpu_execution_accelerator.add(), options)
        accelerators.gpu_execution_accelerator.extend(others)
        prod.model_warmup.extend(_batch_range_warmups(prod))
    elif len(others) != len(accelerators.gpu_execution_accelerator):
        accelerators.ClearField("gpu_execution_accelerator")
        accelerators.gpu_execution_accelerator.extend(others)
    prod.model_warmup.extend(kept_warmups)
    # An emptied block would still be written (as `optimization { execution_accelerators {} }`).
    if not accelerators.ListFields():
        prod.optimization.ClearField("execution_accelerators")
    if not prod.optimization.ListFields():
        prod.ClearField("optimization")
    return prod


def _copies(messages: Iterable[MessageT]) -> list[MessageT]:
    # Copies, not references: the repeated fields they come from are cleared next.
    copies = []
    for message in messages:
        copy = type(message)()
        copy.CopyFrom(message)
        copies.append(copy)
    return copies


def _add_tensorrt(
    accelerator: model_config_pb2.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator,
    options: DeployOptions,
) -> None:
    accelerator.name = TENSORRT
    accelerator.parameters["precision_mode"] = "FP16"
    accelerator.parameters["max_workspace_size_bytes"] = str(options.tensorrt_workspace_bytes)
    if options.tensorrt_cache_dir:
        accelerator.parameters["trt_engine_cache_enable"] = "1"
        accelerator.parameters["trt_engine_cache_path"] = options.tensorrt_cache_dir


def _batch_range_warmups(config: ModelConfig) -> list[model_config_pb2.ModelWarmup]:
    """Warm-ups at batch 1 and at max_batch_size, run before Triton reports READY.

    ONNX Runtime builds a TensorRT engine for the input shapes it has seen and rebuilds it
    (for seconds to minutes) when a request falls outside them. Seeing both ends of the batch
    range while loading makes one engine cover every batch the dynamic batcher can form.
    A model with a dynamic non-batch dimension (the detector's height and width) has no such
    range to cover: none are added for it.
    """
    static = all(dim > 0 for tensor in config.input for dim in tensor.dims)
    if config.max_batch_size < 1 or not static:
        return []
    warmups = []
    for batch in sorted({1, config.max_batch_size}):
        warmup = model_config_pb2.ModelWarmup(name=f"{TENSORRT_WARMUP_PREFIX}{batch}")
        warmup.batch_size = batch
        for tensor in config.input:
            sample = warmup.inputs[tensor.name]
            sample.data_type = tensor.data_type
            sample.dims.extend(tensor.dims)
            sample.zero_data = True
        warmups.append(warmup)
    return warmups


def render_production_repository(
    source: Path, target: Path, options: DeployOptions | None = None
) -> dict[str, ModelConfig]:
    """Writes `target`/<model>/config.pbtxt for every model of `source`; returns them by name.

    Model files in `target` are left alone, so a repository already built there stays valid.
    """
    options = options or DeployOptions()
    configs = {}
    for model_dir in model_dirs(source):
        config = read_config(model_dir)
        configs[config.name or model_dir.name] = (model_dir.name, config)
    if not configs:
        raise ModelBuildError(f"{source}: no model directories with a config.pbtxt")
    named = set(options.model_instances) | set(options.tensorrt_models or ())
    unknown = sorted(named - set(configs))
    if unknown:
        known = ", ".join(sorted(configs))
        raise ModelBuildError(f"no model named {', '.join(unknown)} in {source} (models: {known})")
    rendered = {}
    for name, (directory, config) in configs.items():
        prod = production_config(config, options)
        write_config(prod, target / directory)
        rendered[name] = prod
    return rendered


def describe(config: ModelConfig) -> str:
    """One line per model for the log of the models container."""
    group = config.instance_group[0]
    accelerators = [
        a.name for a in config.optimization.execution_accelerators.gpu_execution_accelerator
    ]
    return (
        f"{config.name}: {group.count} instance(s) on every GPU, max batch "
        f"{config.max_batch_size}, accelerators: {', '.join(accelerators) or 'none (CUDA)'}"
    )


def options_from_arguments(args: argparse.Namespace) -> DeployOptions:
    return DeployOptions(
        instances_per_gpu=_optional_count(args.instances_per_gpu, ENV_INSTANCES_PER_GPU),
        model_instances=_model_counts(args.model_instances, ENV_MODEL_INSTANCES),
        tensorrt_fp16=_flag(args.tensorrt_fp16, ENV_TENSORRT_FP16),
        tensorrt_models=_names(args.tensorrt_models),
        tensorrt_workspace_bytes=_count(
            args.tensorrt_workspace_bytes, ENV_TENSORRT_WORKSPACE_BYTES
        ),
        tensorrt_cache_dir=args.tensorrt_cache_dir or None,
    )


def _count(text: str, what: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = 0
    if value < 1:
        raise ModelBuildError(f"{what}: '{text}' is not a whole number of at least 1")
    return value


def _optional_count(text: str, what: str) -> int | None:
    return None if not text.strip() else _count(text, what)


def _model_counts(text: str, what: str) -> dict[str, int]:
    counts = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, count = item.partition("=")
        if not sep or not name.strip():
            raise ModelBuildError(f"{what}: '{item}' is not MODEL=COUNT")
        counts[name.strip()] = _count(count, f"{what} ({name.strip()})")
    return counts


def _flag(text: str, what: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ModelBuildError(f"{what}: '{text}' is neither true nor false")


def _names(text: str) -> frozenset[str] | None:
    names = frozenset(filter(None, (part.strip() for part in text.split(","))))
    return names or None


def parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m modelkit.deploy", description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--source", type=Path, default=Path("model_repository"), help="configs to start from"
    )
    p.add_argument("--target", type=Path, required=True, help="repository Triton serves")
    p.add_argument(
        "--instances-per-gpu",
        default=env.get(ENV_INSTANCES_PER_GPU, ""),
        help=f"instances of every model on each GPU (${ENV_INSTANCES_PER_GPU}; "
        "default: each model's count in --source)",
    )
    p.add_argument(
        "--model-instances",
        default=env.get(ENV_MODEL_INSTANCES, ""),
        metavar="MODEL=N,...",
        help=f"per-model instances on each GPU (${ENV_MODEL_INSTANCES})",
    )
    p.add_argument(
        "--tensorrt-fp16",
        nargs="?",
        const="true",
        default=env.get(ENV_TENSORRT_FP16, "false"),
        metavar="BOOL",
        help=f"serve through TensorRT in FP16 (${ENV_TENSORRT_FP16})",
    )
    p.add_argument(
        "--tensorrt-models",
        default=env.get(ENV_TENSORRT_MODELS, ""),
        metavar="MODEL,...",
        help=f"models that get TensorRT (${ENV_TENSORRT_MODELS}; default: all)",
    )
    p.add_argument(
        "--tensorrt-workspace-bytes",
        default=env.get(ENV_TENSORRT_WORKSPACE_BYTES, str(DEFAULT_WORKSPACE_BYTES)),
        help=f"TensorRT scratch memory per engine (${ENV_TENSORRT_WORKSPACE_BYTES})",
    )
    p.add_argument(
        "--tensorrt-cache-dir",
        default=env.get(ENV_TENSORRT_CACHE_DIR, DEFAULT_ENGINE_CACHE_DIR),
        help=f"engine cache inside the Triton container, '' for none (${ENV_TENSORRT_CACHE_DIR})",
    )
    return p


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    # The environment is read here only, and handed down as plain options.
    args = parser(os.environ if env is None else env).parse_args(argv)
    try:
        rendered = render_production_repository(
            args.source, args.target, options_from_arguments(args)
        )
    except ModelBuildError as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 2
    for config in rendered.values():
        print(f"deploy: {describe(config)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
