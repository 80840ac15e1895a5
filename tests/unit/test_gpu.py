from __future__ import annotations

import pytest

from orchestrator.contracts import TensorSpec
from orchestrator.errors import PipelineError
from orchestrator.gpu import Gpu, GpuCensus, guard, placement_problems
from orchestrator.triton import InstanceGroup, ModelSpec

H100 = Gpu(0, "NVIDIA H100", 80 * 2**30, 2**30, 37)


def _model(name: str, *kinds: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        versions=("1",),
        platform="onnxruntime_onnx",
        max_batch_size=64,
        inputs={"x": TensorSpec("x", "FP32", (1,))},
        outputs={"y": TensorSpec("y", "FP32", (1,))},
        instance_groups=tuple(InstanceGroup(kind, 1, ()) for kind in kinds),
        preferred_batch_sizes=(16,),
        max_queue_delay_us=100,
        max_queue_size=10,
    )


def test_gpus_present_and_a_model_on_cpu_names_the_model() -> None:
    models = [_model("lipsync", "KIND_GPU"), _model("face_detector", "KIND_CPU")]
    assert placement_problems(2, models) == [
        "model 'face_detector' has KIND_CPU instances while 2 GPU(s) are present: "
        "it would run on the CPU"
    ]


def test_a_model_split_over_cpu_and_gpu_is_a_problem_too() -> None:
    assert placement_problems(1, [_model("lipsync", "KIND_GPU", "KIND_CPU")])


def test_cpu_only_host_has_no_placement_problem() -> None:
    assert placement_problems(0, [_model("lipsync", "KIND_CPU")]) == []


def test_guard_fails_fast_when_a_gpu_is_required_but_absent() -> None:
    census = GpuCensus((), "NVML unavailable: NVML Shared Library Not Found")
    with pytest.raises(PipelineError) as caught:
        guard(census, [_model("lipsync", "KIND_GPU")], require_gpu=True)
    assert str(caught.value) == (
        "startup: DH_REQUIRE_GPU is set but this host has no usable GPU "
        "(NVML unavailable: NVML Shared Library Not Found)"
    )


def test_guard_passes_gpu_models_on_a_gpu_host() -> None:
    guard(GpuCensus((H100,), "ok"), [_model("lipsync", "KIND_GPU")], require_gpu=True)


def test_triton_figures_average_batch_and_times_per_model() -> None:
    from orchestrator.system import triton_figures

    text = "\n".join(
        [
            "# TYPE nv_inference_count counter",
            'nv_inference_count{model="lipsync",version="1"} 96',
            "# TYPE nv_inference_exec_count counter",
            'nv_inference_exec_count{model="lipsync",version="1"} 4',
            "# TYPE nv_inference_request_success counter",
            'nv_inference_request_success{model="lipsync",version="1"} 8',
            "# TYPE nv_inference_queue_duration_us counter",
            'nv_inference_queue_duration_us{model="lipsync",version="1"} 16000',
            "",
        ]
    )
    figures = triton_figures(text)["lipsync"]
    assert figures["average_batch_size"] == 24
    assert figures["average_queue_ms"] == 2.0
