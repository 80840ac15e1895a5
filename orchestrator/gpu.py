"""The GPU guard: GPUs present and a model on CPU instances is a loud failure, never a
silent fallback (the failure this service exists to rule out).

NVML says which GPUs this host has; Triton's model configs say where each model runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pynvml

from orchestrator.errors import PipelineError
from orchestrator.triton import ModelSpec

STAGE = "startup"
GPU_KIND = "KIND_GPU"


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    utilization_percent: int


@dataclass(frozen=True)
class GpuCensus:
    """What NVML reported: the GPUs, or why there are none (no driver is a fact, not an
    error: CPU-only hosts are legitimate unless DH_REQUIRE_GPU says otherwise)."""

    gpus: tuple[Gpu, ...]
    nvml: str  # "ok", or NVML's reason for seeing no GPU


GpuProbe = Callable[[], GpuCensus]


def nvml_census() -> GpuCensus:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return GpuCensus((), f"NVML unavailable: {exc}")
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append(
                Gpu(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_total_bytes=int(memory.total),
                    memory_used_bytes=int(memory.used),
                    utilization_percent=int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                )
            )
        return GpuCensus(tuple(gpus), "ok")
    finally:
        pynvml.nvmlShutdown()


def placement_problems(gpu_count: int, models: list[ModelSpec]) -> list[str]:
    """One line per model that would run on the CPU although GPUs are present."""
    if gpu_count == 0:
        return []
    problems = []
    for model in models:
        kinds = sorted({group.kind for group in model.instance_groups}) or ["no instance group"]
        if kinds != [GPU_KIND]:
            problems.append(
                f"model '{model.name}' has {', '.join(kinds)} instances while {gpu_count} "
                f"GPU(s) are present: it would run on the CPU"
            )
    return problems


def gpu_problems(census: GpuCensus, models: list[ModelSpec], *, require_gpu: bool) -> list[str]:
    """One line per reason the GPUs and the models' placement do not fit together."""
    problems = []
    if require_gpu and not census.gpus:
        problems.append(f"DH_REQUIRE_GPU is set but this host has no usable GPU ({census.nvml})")
    return problems + placement_problems(len(census.gpus), models)


def guard(census: GpuCensus, models: list[ModelSpec], *, require_gpu: bool) -> None:
    """Raises at start-up when GPUs are required but absent, or present but unused."""
    problems = gpu_problems(census, models, require_gpu=require_gpu)
    if problems:
        raise PipelineError(STAGE, "; ".join(problems))
