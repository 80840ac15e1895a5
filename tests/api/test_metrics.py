"""/metrics moves after a job: jobs by state, durations, frames, Triton latency."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import AVATAR_FPS
from tests.api.server import submit_job, wait_for_job

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(client: httpx.Client) -> Samples:
    reply = client.get("/metrics")
    assert reply.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_after_a_job(client: httpx.Client, avatar_id: str, speech: Path) -> None:
    before = _samples(client)

    wait_for_job(client, submit_job(client, speech, avatar_id=avatar_id).json()["id"])
    after = _samples(client)

    frames = math.ceil(1.0 * AVATAR_FPS)
    ok = {"state": "succeeded"}
    assert (
        _value(after, "dh_jobs_finished_total", **ok)
        == _value(before, "dh_jobs_finished_total", **ok) + 1
    )
    assert _value(after, "dh_jobs", **ok) == _value(before, "dh_jobs", **ok) + 1
    assert (
        _value(after, "dh_frames_processed_total")
        >= _value(before, "dh_frames_processed_total") + frames
    )
    assert _value(after, "dh_job_duration_seconds_count", **ok) > _value(
        before, "dh_job_duration_seconds_count", **ok
    )
    for stage in ("decode", "infer", "encode"):
        assert _value(after, "dh_stage_duration_seconds_count", stage=stage) > _value(
            before, "dh_stage_duration_seconds_count", stage=stage
        )
    lipsync = {"model": "lipsync", "outcome": "ok"}
    assert _value(after, "dh_triton_request_duration_seconds_count", **lipsync) > _value(
        before, "dh_triton_request_duration_seconds_count", **lipsync
    )
    assert _value(after, "dh_triton_requests_in_flight", model="lipsync") == 0
    assert ("dh_backlog_jobs", ()) in after
    # No GPU on this machine: the NVML gauges are absent rather than zero or an error.
    assert not any(name.startswith("dh_gpu_") for name, _ in after)
