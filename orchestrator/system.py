"""What `GET /v1/system` reports: GPUs, Triton's version, how each model is served, and the
key figures from Triton's own metrics endpoint."""

from __future__ import annotations

import asyncio
import urllib.request
from collections import defaultdict
from dataclasses import asdict

from prometheus_client.parser import text_string_to_metric_families

from orchestrator.errors import PipelineError
from orchestrator.pipeline.runner import Engine
from orchestrator.triton import ModelSpec

METRICS_TIMEOUT_S = 5.0
# Triton's per-model counters (cumulative since start) that the report turns into averages.
TRITON_COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
)


def _read(url: str) -> str:
    with urllib.request.urlopen(url, timeout=METRICS_TIMEOUT_S) as reply:
        body: bytes = reply.read()
        return body.decode()


def triton_figures(metrics_text: str) -> dict[str, dict[str, float]]:
    """Per model: request counts, average batch size, average queue and compute time."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(metrics_text):
        if family.name not in TRITON_COUNTERS:
            continue
        for sample in family.samples:
            # The parser names counter samples "<family>_total"; Triton's have no suffix.
            if "model" in sample.labels and sample.name in (family.name, f"{family.name}_total"):
                totals[sample.labels["model"]][family.name] += sample.value
    figures = {}
    for model, t in totals.items():
        executions = t["nv_inference_exec_count"]
        successes = t["nv_inference_request_success"]
        figures[model] = {
            "requests_succeeded": successes,
            "requests_failed": t["nv_inference_request_failure"],
            "inferences": t["nv_inference_count"],
            "executions": executions,
            "average_batch_size": t["nv_inference_count"] / executions if executions else 0.0,
            "average_queue_ms": t["nv_inference_queue_duration_us"] / successes / 1000
            if successes
            else 0.0,
            "average_compute_ms": t["nv_inference_compute_infer_duration_us"] / successes / 1000
            if successes
            else 0.0,
        }
    return figures


def _model(spec: ModelSpec) -> dict[str, object]:
    return {
        "name": spec.name,
        "platform": spec.platform,
        "versions": list(spec.versions),
        "max_batch_size": spec.max_batch_size,
        "instance_groups": [asdict(group) for group in spec.instance_groups],
        "dynamic_batching": {
            "preferred_batch_sizes": list(spec.preferred_batch_sizes),
            "max_queue_delay_us": spec.max_queue_delay_us,
            "max_queue_size": spec.max_queue_size,
        },
        "inputs": {name: t.describe() for name, t in spec.inputs.items()},
        "outputs": {name: t.describe() for name, t in spec.outputs.items()},
    }


async def system_report(engine: Engine) -> dict[str, object]:
    census = await engine.probe_gpus()
    served = engine.served
    try:
        metrics = triton_figures(await asyncio.to_thread(_read, engine.settings.triton_metrics_url))
        metrics_error = None
    except (OSError, ValueError) as exc:
        metrics, metrics_error = {}, f"{engine.settings.triton_metrics_url}: {exc}"
    try:
        version: str | None = await engine.client.server_version()
    except PipelineError:
        version = None
    return {
        "gpus": [asdict(gpu) for gpu in census.gpus],
        "nvml": census.nvml,
        "triton": {"url": engine.settings.triton_url, "version": version},
        "models": [_model(served.lipsync), _model(served.detector)],
        "triton_metrics": metrics,
        "triton_metrics_error": metrics_error,
        "readiness_problems": await engine.readiness_problems(census),
    }
