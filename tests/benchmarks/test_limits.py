"""benchmarks.limits as the lead runs it: every figure present and positive, and no figure
at all from a Triton off contract or from a run in which a job failed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import limits
from benchmarks.report import Figures
from orchestrator.errors import PipelineError
from orchestrator.settings import Settings
from tests.conftest import WAV2LIP_MODEL, TritonAddress

# What the issue asks the JSON line to hold, at least.
REQUIRED = (
    "ratio_limit_512",
    "ratio_limit_1080",
    "ratio_naive_1080",
    "ratio_concurrency_4",
    "avatar_prep_fps",
    "first_frame_s",
)


def _quick(model: str, url: str) -> tuple[int, list[str]]:
    lines: list[str] = []
    plan = limits.Plan(
        avatar_seconds=limits.QUICK_AVATAR_SECONDS,
        audio_seconds=limits.QUICK_AUDIO_SECONDS,
        lipsync_model=model,
        gpu_host=None,
        model_frames=0,
    )
    return limits.run(plan, url, None, lines.append), lines


@pytest.mark.timeout(240)
def test_quick_run_reports_every_figure_positive_in_its_last_json_line(
    triton: TritonAddress,
) -> None:
    status, lines = _quick(WAV2LIP_MODEL, triton.grpc_url)

    assert status == 0
    figures = json.loads(lines[-1].splitlines()[-1])
    assert set(REQUIRED) <= figures.keys()
    numbers = {k: v for k, v in figures.items() if not isinstance(v, str)}
    assert numbers and all(v > 0 for v in numbers.values()), numbers
    assert figures["lipsync_model"] == WAV2LIP_MODEL
    assert figures["limit_assumes"].startswith("model and codec share the CPU")
    assert "e2e / limit" in lines[0]


def test_a_triton_off_contract_is_refused_naming_the_model_and_tensor(
    triton: TritonAddress, capsys: pytest.CaptureFixture[str]
) -> None:
    status, lines = _quick("face_detector", triton.grpc_url)

    assert status == limits.EXIT_REFUSED
    assert lines == []
    error = capsys.readouterr().err
    assert "refused" in error and "'face_detector'" in error and "'mel'" in error


def test_a_failed_job_ends_the_run_with_its_stage_and_no_figure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def failing(settings: Settings, work: Path, plan: limits.Plan) -> Figures:
        raise PipelineError("encode", "No space left on device")

    monkeypatch.setattr(limits, "measure", failing)
    status, lines = _quick(WAV2LIP_MODEL, "127.0.0.1:1")

    assert status == limits.EXIT_FAILED_JOB
    assert lines == []
    error = capsys.readouterr().err
    assert "stage 'encode'" in error and "No space left on device" in error
