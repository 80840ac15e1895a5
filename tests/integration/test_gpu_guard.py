"""The GPU guard against the real server, whose models run on CPU instances."""

from __future__ import annotations

import pytest

from orchestrator.errors import PipelineError
from orchestrator.gpu import Gpu, GpuCensus
from orchestrator.pipeline.runner import Engine
from orchestrator.settings import Settings
from orchestrator.system import system_report

TWO_GPUS = GpuCensus(
    (Gpu(0, "NVIDIA H100", 80 * 2**30, 2**30, 0), Gpu(1, "NVIDIA H100", 80 * 2**30, 2**30, 0)),
    "ok",
)
NO_GPU = GpuCensus((), "NVML unavailable: NVML Shared Library Not Found")


async def test_gpus_present_but_models_on_cpu_refuses_to_start(settings: Settings) -> None:
    engine = Engine(settings, gpu_probe=lambda: TWO_GPUS)
    try:
        with pytest.raises(PipelineError) as caught:
            await engine.start()
    finally:
        await engine.close()
    assert caught.value.stage == "startup"
    for model in ("lipsync", "face_detector"):
        assert f"model '{model}' has KIND_CPU instances while 2 GPU(s) are present" in str(
            caught.value
        )


async def test_readiness_names_each_model_that_would_run_on_the_cpu(settings: Settings) -> None:
    async with Engine(settings, gpu_probe=lambda: NO_GPU) as engine:
        assert await engine.readiness_problems() == []
        engine.gpu_probe = lambda: TWO_GPUS  # a GPU appears after start-up
        problems = await engine.readiness_problems()
    assert len(problems) == 2
    assert all("would run on the CPU" in line for line in problems)


async def test_required_gpu_on_a_gpu_less_host_fails_fast(settings: Settings) -> None:
    required = settings.model_copy(update={"require_gpu": True})
    engine = Engine(required, gpu_probe=lambda: NO_GPU)
    try:
        with pytest.raises(PipelineError, match="DH_REQUIRE_GPU is set but this host has no"):
            await engine.start()
    finally:
        await engine.close()


async def test_system_report_shows_models_batching_and_triton_figures(settings: Settings) -> None:
    async with Engine(settings, gpu_probe=lambda: NO_GPU) as engine:
        report = await system_report(engine)
    assert report["gpus"] == []
    assert report["triton"]["version"]  # type: ignore[index]
    models = {m["name"]: m for m in report["models"]}  # type: ignore[attr-defined]
    assert models["lipsync"]["max_batch_size"] >= 64
    assert models["lipsync"]["instance_groups"][0]["kind"] == "KIND_CPU"
    assert models["lipsync"]["dynamic_batching"]["preferred_batch_sizes"]
    figures = report["triton_metrics"]["lipsync"]  # type: ignore[index]
    assert figures["inferences"] > 0 and figures["average_batch_size"] >= 1
    assert report["readiness_problems"] == []
